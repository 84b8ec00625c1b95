"""Shared helpers: paths to the shipped samples and the shared real data, manifest writing, the
stage-1 sample run, a two-node Ray cluster and an S3 server (moto) on loopback."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "manifests" / "samples"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_manifest(folder: Path, sources: list[dict], stages: list[dict] | None = None, **extra) -> Path:
    """A manifest in `folder` writing to `folder/run`."""
    data = {"output": "run", "sources": sources, "stages": stages if stages is not None else [], **extra}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def stage1_sources(xquad_glob: str = "*.jsonl.gz", bitext_glob: str = "*.tsv.gz") -> list[dict]:
    return [
        {
            "name": "xquad_r",
            "task": "retrieval",
            "path": str(SAMPLES / "xquad_r" / xquad_glob),
            "columns": {"query": "question", "positive": "context"},
            "licence": "CC-BY-SA-4.0",
        },
        {
            "name": "sib200_bitext",
            "task": "bitext",
            "path": str(SAMPLES / "sib200_bitext" / bitext_glob),
            "columns": {"query": "source", "positive": "target"},
            "licence": "CC-BY-SA-4.0",
            "language": {"query": "eng_Latn"},
        },
    ]


def stage1_manifest(folder: Path, sources: list[dict] | None = None, output: str = "run") -> Path:
    """The shipped manifests/stage1.yaml, writing to `output` (smaller shards, to have several), its
    language ID with lid176 and its filter without the two filters that cut texts into words
    (`min_length`, `C4QualityFilter`): these runs test runs (resume, clusters, object storage,
    readers), which model tags and which filters drop rows does not matter to them; lid176 takes half
    the time, and the word tokenizers (spaCy, pythainlp...) two thirds of the run's. The shipped
    manifest runs whole in the README's test; the filters are tested in test_filters.py."""
    from pipeline.stages.filter import PAIR_FILTERS

    manifest = yaml.safe_load((ROOT / "manifests" / "stage1.yaml").read_text(encoding="utf-8"))
    stages = manifest["stages"]
    for stage in stages:
        if stage["stage"] in ("langid", "langid_prior"):
            stage["model"] = "lid176"
        if stage["stage"] == "filter":
            stage["filters"] = [{"name": name} for name in PAIR_FILTERS if name != "min_length"]
    for eval_set in (s for stage in stages for s in stage.get("eval_sets", [])):
        eval_set["path"] = str(ROOT / "manifests" / eval_set["path"])
    return write_manifest(folder, sources or stage1_sources(), stages, shards={"rows_per_shard": 4000}, output=output)


def steps_in(manifest: Path) -> int:
    """How many steps a run of `manifest` reports: ingest, then one per stage."""
    return 1 + len(yaml.safe_load(manifest.read_text(encoding="utf-8"))["stages"])


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory) -> Path:
    """The stage-1 sample run, as a user runs it (the CLI, local files): its run folder."""
    folder = tmp_path_factory.mktemp("stage1")
    result = run_cli("run", str(stage1_manifest(folder)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A folder laid out as the checkout is for a user (the shipped manifests and samples, the
    trainer's configs), where the README's commands run as written: their relative paths (`runs/...`)
    land here, never in the checkout."""
    import shutil

    root = tmp_path_factory.mktemp("workspace")
    (root / "manifests").mkdir()
    for manifest in (ROOT / "manifests").glob("*.yaml"):
        shutil.copy(manifest, root / "manifests")
    (root / "manifests" / "samples").symlink_to(SAMPLES)
    shutil.copytree(ROOT / "train" / "configs", root / "train" / "configs")
    return root


def run_shell(command: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """A README command, as a user types it in a shell (this interpreter's environment first on PATH)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def stage2_run(workspace) -> Path:
    """The README's `python -m pipeline run manifests/stage2.yaml`, run once per session, then its
    statistics recomputed against a reference distribution (`pipeline stats --reference`): the folder
    holding it as `run/`."""
    result = run_shell("python -m pipeline run manifests/stage2.yaml", workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = workspace / "stage2"
    folder.mkdir()
    (folder / "run").symlink_to(workspace / "runs" / "stage2")
    (folder / "reference.csv").write_text(
        "language,count\neng,500\ndeu_Latn,300\ncmn_Hans,200\nyor_Latn,10\n", encoding="utf-8"
    )
    for command in (f"stats {folder / 'run'} --reference {folder / 'reference.csv'}", f"dashboard {folder / 'run'}"):
        result = run_cli(*command.split())
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def eos_tokenizer(small_model, tmp_path_factory) -> Path:
    """The small test model's tokenizer with an EOS token (its [SEP]), as a model folder has."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(small_model))
    tokenizer.eos_token = "[SEP]"
    folder = tmp_path_factory.mktemp("eos_tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


STAGE1_STAGES = [
    {"stage": "normalize"},
    {"stage": "langid"},
    {"stage": "exact_dedup", "key": ["query", "positive"]},
    {"stage": "near_dedup", "fields": ["query", "positive"]},
]


def ready(stage):
    """A stage as a worker holds it: built, then `setup()` (models and tables loaded)."""
    stage.setup()
    return stage


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def ray_local():
    """An embedded two-CPU Ray for tests that call a stage's Ray plan directly."""
    from pipeline.engine import cluster as ray_cluster

    started = ray_cluster.start(None, 2, None, True)
    yield
    if started:
        ray_cluster.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


def xquad_paragraphs(data: Path, lang: str) -> list[dict]:
    """XQuAD-R's paragraphs of one language (development data), each with its `qas`."""
    import tarfile

    with tarfile.open(data / "xquad-r-dev.tar.xz", "r:xz") as tar:
        doc = json.load(tar.extractfile(f"xquad-r/{lang}.json"))  # type: ignore[arg-type]
    return [p for article in doc["data"] for p in article["paragraphs"]]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a crash or an OOM kill of the machine
    would. Ray's worker processes are children of the raylet but lead their own process groups, so
    killing the driver's group alone leaves workers running (and writing) until they notice."""
    import signal

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def shard_digests(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every shard file and passage-table file of a run, by path: equal digests mean
    byte-identical output."""
    files = [*sorted((run_dir / "shards").rglob("*.parquet")), *sorted((run_dir / "corpus").glob("*.parquet"))]
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def passages_manifest(folder: Path, **extra) -> Path:
    """Retrieval rows whose source gives 3 negatives each, and SIB-200 topics whose negatives
    `build_pairs` makes (stored by reference from that step on); small shards, no statistics."""
    with gzip.open(SAMPLES / "xquad_r" / "en.jsonl.gz", "rt", encoding="utf-8") as f:
        items = list({r["question"]: r for r in map(json.loads, f)}.values())[:150]  # one row per question
    contexts = sorted({r["context"] for r in items})
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "qa.jsonl").open("w", encoding="utf-8") as f:
        for i, r in enumerate(items):
            negatives = [c for c in contexts if c != r["context"]][i % 5 : i % 5 + 3]
            f.write(json.dumps({"question": r["question"], "context": r["context"], "negatives": negatives}) + "\n")
    sources = [
        {
            "name": "qa",
            "task": "retrieval",
            "path": "qa.jsonl",
            "licence": "CC-BY-SA-4.0",
            "columns": {"query": "question", "positive": "context", "negatives": "negatives"},
        },
        {
            "name": "topics",
            "task": "classification",
            "path": str(SAMPLES / "sib200_topics" / "*.tsv.gz"),
            "licence": "CC-BY-SA-4.0",
            "columns": {"query": "text", "label": "category"},
        },
    ]
    return write_manifest(
        folder,
        sources,
        [{"stage": "build_pairs", "negatives": {"classification": 3}}],
        shards={"rows_per_shard": 400},
        stats={"enabled": False},
        **extra,
    )


def by_reference(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Records with inline `negatives` as the shards hold them (`negative_ids`), and the passage
    table's rows for those negatives (doc_id, text), sorted by id."""
    from core.passages import DOC_ID, NEGATIVE_IDS, TEXT, passage_id

    texts: dict[str, str] = {}
    out = []
    for row in rows:
        row = dict(row)
        negatives = row.pop("negatives", None)
        row[NEGATIVE_IDS] = [passage_id(t) for t in negatives] if negatives is not None else None
        texts.update(zip(row[NEGATIVE_IDS] or [], negatives or []))
        out.append(row)
    return out, [{DOC_ID: d, TEXT: t} for d, t in sorted(texts.items())]


def _wait_for_nodes(ray_cli: str, address: str, env: dict, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = subprocess.run(
            [ray_cli, "status", f"--address={address}"], env=env, capture_output=True, text=True, timeout=60
        ).stdout
        active = status.split("Active:")[1].split("Pending:")[0] if "Active:" in status else ""
        if active.count("node_") >= count and f"/{count}.0 CPU" in status:
            return
        assert time.monotonic() < deadline, f"cluster did not reach {count} nodes:\n{status}"
        time.sleep(2)


@pytest.fixture(scope="session")
def loopback_cluster():
    """A real two-node Ray cluster on 127.0.0.1 (a head and a worker node, one CPU each): its address."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    # The nodes' own credentials for the loopback S3 server (as a KubeRay pod has its own); the
    # endpoint comes from the driver (pipeline/engine/cluster.py passes it on).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **S3_CREDENTIALS}
    address = f"127.0.0.1:{random.Random().randint(20000, 40000)}"
    start = [ray_cli, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [*start, "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        subprocess.run([*start, f"--address={address}"], check=True, env=env, capture_output=True, timeout=120)
        _wait_for_nodes(ray_cli, address, env, 2)
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A small BERT-style encoder with a byte-level BPE vocabulary trained on the XQuAD-R sample, built
    locally (tests may not download a model), pass-through so that it ranks lexically."""
    import gzip
    import json

    from train.small_model import build_small_model

    texts = [
        json.loads(line)[k]
        for lang in ("en", "de", "zh")
        for line in gzip.open(SAMPLES / "xquad_r" / f"{lang}.jsonl.gz", "rt")
        for k in ("question", "context")
    ]
    return build_small_model(
        texts, tmp_path_factory.mktemp("small_model"), vocab_size=4000, hidden=128, layers=2, pass_through=True
    )


CHROMIUM = "/usr/bin/chromium"
# Chromium on a closed network: no background connections, no component updates (see README).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium driven by playwright (which downloads no browser of its own)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():  # a fresh machine: the scripted install (Debian's package, about a minute)
        installed = subprocess.run(
            ["bash", str(ROOT / ".ci" / "install-browser")], capture_output=True, text=True, timeout=900
        )
        if installed.returncode or not Path(CHROMIUM).exists():
            pytest.fail(
                f"{CHROMIUM} is missing and .ci/install-browser could not install it:\n{installed.stderr[-2000:]}"
            )
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path, ready: str = "document.querySelectorAll('.js-plotly-plot').length > 0"):
    """Open a local HTML file; returns the page and the list its console errors are collected in."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_function(ready, timeout=30_000)
    return page, errors


def chart_sizes(page) -> dict[str, tuple[float, float, int]]:
    """Per chart element: width, height of its drawn SVG, and how many marks (bars, paths) it drew."""
    return {
        name: tuple(v)
        for name, v in page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('.chart')].map(d => {
             const svg = d.querySelector('.main-svg');
             const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
             const marks = d.querySelectorAll('.point, .bars path, .slice, .trace path, .hm image');
             return [d.id, [r.width, r.height, marks.length]];
             }))"""
        ).items()
    }


# --- object storage: a real S3 API (moto in server mode) on 127.0.0.1 -----------------------------

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
BUCKET = "corpus"


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free loopback port, with the bucket `corpus`; this process's
    environment points at it (as AWS_ENDPOINT_URL would on a user's machine). Its URL."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


class FaultyProxy:
    """A loopback HTTP proxy in front of the S3 server that fails some requests as a real store or
    network does: every `fail_every`-th request answered 503 SlowDown, every `drop_every`-th
    connection closed without an answer, every PUT delayed by `put_delay` seconds. Test
    infrastructure: the client under test and the S3 server are both real."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.fail_every = self.drop_every = 0
        self.put_delay = 0.0
        self.requests = self.failed = self.dropped = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = (
                    self._chunked()
                    if "chunked" in self.headers.get("Transfer-Encoding", "")
                    else self.rfile.read(int(self.headers.get("Content-Length") or 0))
                )
                with proxy.lock:
                    proxy.requests += 1
                    n = proxy.requests
                if proxy.drop_every and n % proxy.drop_every == 0:
                    proxy.dropped += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if proxy.fail_every and n % proxy.fail_every == 0:
                    proxy.failed += 1
                    error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                if self.command == "PUT" and proxy.put_delay:
                    time.sleep(proxy.put_delay)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                conn.request(self.command, self.path, body, dict(self.headers))
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():  # a HEAD answer keeps its Content-Length (the object's size)
                    if key.lower() not in ("transfer-encoding", "connection", "server", "date") and (
                        key.lower() != "content-length" or self.command == "HEAD"
                    ):
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def _chunked(self) -> bytes:
                """A chunked body as it came (framing included), to pass on unchanged."""
                raw = b""
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (trailer := self.rfile.readline()) not in (b"\r\n", b""):
                            raw += trailer
                        return raw + b"\r\n"
                    raw += self.rfile.read(size + 2)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def s3_proxy(s3_endpoint):
    proxy = FaultyProxy(s3_endpoint)
    yield proxy
    proxy.server.shutdown()


def upload_tree(local: Path, url: str) -> None:
    """Every file under a local folder copied to an S3 prefix."""
    from core import storage

    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload(path, storage.join(url, path.relative_to(local).as_posix()))


def object_digests(url: str) -> dict[str, str]:
    """`shard_digests` of a run folder in object storage."""
    from core import storage

    shards = storage.join(url, "shards")
    return {
        p[len(shards) + 1 :]: hashlib.sha256(storage.read_bytes(p)).hexdigest()
        for p in storage.list_files(shards)
        if p.endswith(".parquet")
    }
