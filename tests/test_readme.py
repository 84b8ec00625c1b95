"""The user guide stays true: every shell command of the README runs here, as written, in a folder laid
out like the checkout (`workspace`), so the two cannot drift. Two commands are run in their own way,
as noted: the install and test commands are what `.ci/run` runs (CI runs them on a clean clone), and
the trainer's `fit` commands run its shipped configs cut to 2 steps (the full 600 + 300 steps take
about twenty minutes on 2 cores) and to two MEL ranks (`train eval` encodes the held-out split once
per rank and layer of the grid: 75 s for the shipped four ranks)."""

from __future__ import annotations

import gzip
import json
import re

import pytest
import yaml

from pipeline.reporting.manifest_doc import markdown
from tests.conftest import ROOT, SAMPLES, run_shell

pytestmark = pytest.mark.slow
README = (ROOT / "README.md").read_text(encoding="utf-8")


def commands() -> list[str]:
    """The shell commands of the README's ```bash blocks (continued lines joined)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(" ".join(line.split()))
    return found


INSTALL = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && '
    "python -m pipeline run manifests/stage1.yaml"
)
# Each README command, and the test below that runs it.
RUN_BY = {
    INSTALL: "test_install_run_and_stats (its install: test_install_and_test_commands_are_what_ci_runs)",
    "python -m pytest -q": "test_install_and_test_commands_are_what_ci_runs",
    "python -m pipeline validate my-pairs.yaml && python -m pipeline run my-pairs.yaml": "test_your_own_data",
    "python -m pipeline stats runs/stage1 --lang deu_Latn": "test_install_run_and_stats",
    "python -m pipeline run manifests/stage2.yaml": "the stage2_run fixture (test_train_and_export)",
    "python -m train fit train/configs/stage1.yaml": "test_train_and_export (2 steps)",
    "python -m train fit train/configs/stage2.yaml": "test_train_and_export (2 steps)",
    "python -m train eval runs/train-stage2 --data manifests/samples/xquad_r_heldout": "test_train_and_export",
    "python -m train export runs/train-stage2 my-model --rank 64 --layers 2 --dims 64": "test_train_and_export",
    **{
        f"python -m pipeline export runs/stage2 out/{o} --layout {layout}{extra}": "test_train_and_export"
        for o, layout, extra in [
            ("ml-embed", "ml-embed", " --tokenizer path/to/your/model"),
            ("flat", "flat", ""),
            ("st", "sentence-transformers", ""),
            ("fe", "flagembedding", ""),
        ]
    },
}


def test_every_readme_command_is_run_here():
    assert commands() and set(commands()) == set(RUN_BY), set(commands()) ^ set(RUN_BY)


def test_install_and_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv .venv" in ci and ". .venv/bin/activate" in ci and 'pip install -q -e ".[dev]"' in ci
    assert ci.rstrip().splitlines()[-1] == "python -m pytest -q"


def test_install_run_and_stats(workspace):
    run = run_shell(INSTALL.rsplit("&& ", 1)[1], workspace)  # the checkout is installed: the run itself
    assert run.returncode == 0, run.stderr[-3000:]
    shards = list((workspace / "runs" / "stage1" / "shards").rglob("*.parquet"))
    assert shards and (workspace / "runs" / "stage1" / "stats" / "dashboard.html").exists()
    stats = run_shell("python -m pipeline stats runs/stage1 --lang deu_Latn", workspace)
    assert stats.returncode == 0 and "German" in stats.stdout


def test_your_own_data(workspace):
    """The README's manifest for a JSONL of pairs, with its Hugging Face source added."""
    import datasets

    manifest, hf_source = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, re.S)[:2])
    manifest["sources"] += hf_source
    (workspace / "my-pairs.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    (workspace / "data").mkdir(exist_ok=True)
    rows = [json.loads(line) for line in gzip.open(SAMPLES / "xquad_r" / "en.jsonl.gz", "rt")][:300]
    (workspace / "data" / "faq.jsonl").write_text(
        "".join(json.dumps({"question": r["question"], "answer": r["context"]}) + "\n" for r in rows), encoding="utf-8"
    )
    pairs = [
        {
            "sentence1": f"Sentence number {i} about a cat.",
            "sentence2": f"Sentence {i} about a cat.",
            "similarity_score": 4.5,
        }
        for i in range(50)
    ]
    datasets.Dataset.from_list(pairs).save_to_disk(str(workspace / "data" / "stsb_de"))
    command = next(c for c in RUN_BY if c.startswith("python -m pipeline validate"))
    result = run_shell(command, workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "my-pairs.yaml: ok (2 sources, 4 stages)" in result.stderr
    ledger = json.loads((workspace / "runs" / "my-pairs" / "shards" / "_SUCCESS.json").read_text())
    assert {s["source"] for s in ledger["shards"]} == {"faq", "stsb_de"}


def test_train_and_export(workspace, stage2_run, eos_tokenizer):
    configs = workspace / "train" / "configs"
    for name in ("stage1", "stage2"):  # the shipped configs, cut to 2 steps and two ranks
        config = yaml.safe_load((configs / f"{name}.yaml").read_text(encoding="utf-8"))
        config.update(steps=2, save_every=2, eval=None)
        config["matryoshka"]["ranks"] = [32, 64]
        if "init_from" in config:
            config["init_from"] = config["init_from"].replace("step-0000600", "step-0000002")
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for command in (c for c in RUN_BY if c.startswith("python -m train")):
        result = run_shell(command, workspace)
        assert result.returncode == 0, (command, result.stderr[-3000:])
    assert (workspace / "runs" / "train-stage2" / "eval.csv").exists()
    snippet = re.search(r"```python\n(from sentence_transformers.*?)```", README, re.S).group(1)
    (workspace / "snippet.py").write_text(snippet + "print(model.encode(['x']).shape)\n", encoding="utf-8")
    result = run_shell("python snippet.py", workspace)
    assert result.returncode == 0 and "(1, 64)" in result.stdout, result.stderr[-3000:]
    for command in (c for c in RUN_BY if c.startswith("python -m pipeline export")):
        result = run_shell(command.replace("path/to/your/model", str(eos_tokenizer)), workspace)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert (workspace / command.split()[5] / "export_report.json").exists()


def test_manifest_reference_is_the_schema():
    from pipeline.api import json_schema

    assert (ROOT / "docs" / "manifest.md").read_text(encoding="utf-8") == markdown(json_schema()), (
        "docs/manifest.md is stale: python -m pipeline schema --markdown > docs/manifest.md"
    )


def test_docs_tell_no_history_and_name_files_that_exist():
    texts = {p: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    for path, text in texts.items():
        assert not re.search(r"\bstops? \d+\b", text, re.I), path
        for link in re.findall(r"\]\(((?:docs/|\.\./)?[\w./-]+\.(?:md|png))\)", text):
            assert (path.parent / link).exists(), (path.name, link)
    assert len(README.splitlines()) <= 300


def test_readme_exports_name_every_layout():
    from pipeline.export.layouts import LAYOUTS

    assert {c.split("--layout ")[1].split()[0] for c in RUN_BY if "--layout" in c} == set(LAYOUTS)
