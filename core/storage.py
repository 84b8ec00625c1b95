"""One place that reads and writes files, on a local disk or in object storage (`s3://`, `gs://`).

A path is a string: a local path, or a URL whose scheme is in `SCHEMES`. Everything the pipeline
reads (sources, evaluation sets) and writes (checkpoints, shards, reports) goes through here, so the
rest of the code never asks which it is. Built on pyarrow's filesystems rather than fsspec/s3fs:
they are what Ray Data and Parquet use already (one client, one set of settings, multipart uploads
and ranged reads in C++), and `S3FileSystem` takes a retry strategy (`AwsStandardS3RetryStrategy`:
throttling, 5xx and dropped connections retried with exponential backoff), so we add no retry loop.

Credentials and endpoints come from each store's standard environment and config files (for S3:
`AWS_ACCESS_KEY_ID`..., `AWS_PROFILE`, `~/.aws/config`, an instance role; `AWS_ENDPOINT_URL` or
`AWS_ENDPOINT_URL_S3` for an S3-compatible store; `AWS_MAX_ATTEMPTS` for the retry count), never
from a manifest. Object stores have no rename: a write of one object is atomic (a reader sees the
whole object or none), so callers commit a set of files with a marker object (see
`pipeline/engine/checkpoint.py`), never by renaming a folder.
"""

from __future__ import annotations

import functools
import glob as local_glob
import io
import os
import random
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMES = ("s3", "gs", "gcs")  # object stores pyarrow has a filesystem for (and we test: s3)
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # `s3:...`, `http:...`; not a Windows drive `C:`
_GLOB = re.compile(r"[*?\[]")
T = TypeVar("T")
# Errors worth another try of a whole-object operation (the substrings Ray Data retries its own writes
# on, see `DataContext.retried_io_errors`): pyarrow's retry strategy covers single requests, but a
# multipart upload whose part lost its connection fails the whole write (seen on pyarrow 26).
TRANSIENT = (
    "AWS Error NETWORK_CONNECTION",
    "AWS Error SLOW_DOWN",
    "AWS Error INTERNAL_FAILURE",
    "AWS Error SERVICE_UNAVAILABLE",
    "HTTP status 5",
    "curlCode: 52",
    "curlCode: 56",
)
ATTEMPTS = 5
STORAGE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_MAX_ATTEMPTS",
    "GOOGLE_CLOUD_PROJECT",
)  # settings (no secrets) a driver passes on to its cluster's workers


def is_url(path: str) -> bool:
    """Whether `path` is meant as a URL (even a malformed or unsupported one), not a local path."""
    return bool(_URL_LIKE.match(str(path)))


def check_url(path: str) -> str:
    """`path` if it is a well-formed URL of a supported store, else ValueError saying why. A URL is
    never taken for a local path (`s3:/bucket` would otherwise become a folder named `s3:`)."""
    parts = urlsplit(path)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(
            f"{path!r}: unsupported storage {parts.scheme + '://'!r} "
            f"(supported: {', '.join(s + '://' for s in SCHEMES)}, or a local path)"
        )
    if not path.startswith(f"{parts.scheme}://") or not parts.netloc:
        raise ValueError(f"{path!r}: malformed URL; write {parts.scheme}://BUCKET/PATH")
    if parts.query or parts.fragment:
        raise ValueError(
            f"{path!r}: settings do not belong in the URL; "
            "use the store's environment (e.g. AWS_ENDPOINT_URL, AWS_PROFILE)"
        )
    return path.rstrip("/")


def join(base: str, *parts: str) -> str:
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=None)
def _store(scheme: str, bucket: str) -> pafs.FileSystem:
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        retries = pafs.AwsStandardS3RetryStrategy(max_attempts=int(os.environ.get("AWS_MAX_ATTEMPTS", "8")))
        if region is None and endpoint is None:  # let pyarrow ask the bucket's region
            return pafs.S3FileSystem(region=pafs.resolve_s3_region(bucket), retry_strategy=retries)
        return pafs.S3FileSystem(endpoint_override=endpoint, region=region, retry_strategy=retries)
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `path` and the path within it (what `pq`, `ds` and Ray Data take)."""
    if not is_url(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    parts = urlsplit(check_url(path))
    return _store(parts.scheme.lower(), parts.netloc), f"{parts.netloc}{parts.path}".rstrip("/")


def _url(like: str, inner: str) -> str:
    """`inner` (a path of `like`'s filesystem) written the way `like` is (URL or local)."""
    return f"{urlsplit(like).scheme}://{inner}" if is_url(like) else inner


def retried(operation: Callable[[], T], what: str) -> T:
    """`operation()` again after a transient store error, with jittered exponential backoff; other
    errors, and the last attempt's, are raised naming `what`."""
    for attempt in range(ATTEMPTS):
        try:
            return operation()
        except OSError as exc:
            if attempt == ATTEMPTS - 1 or not any(marker in str(exc) for marker in TRANSIENT):
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0) * random.uniform(0.5, 1.5))
    raise AssertionError(f"unreachable: {what}")


# --- reading --------------------------------------------------------------------------------------


def info(path: str) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner)


def exists(path: str) -> bool:
    return info(path).type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    return info(path).type == pafs.FileType.File


def open_input(path: str) -> io.BufferedReader:
    """A seekable, buffered binary reader (iterates lines like a local file)."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    return io.BufferedReader(fs.open_input_file(inner), buffer_size=1 << 20)


def parquet_file(path: str) -> pq.ParquetFile:
    fs, inner = filesystem(path)
    return pq.ParquetFile(inner, filesystem=fs)


def read_bytes(path: str) -> bytes:
    def read() -> bytes:
        with open_input(path) as f:
            return f.read()

    return retried(read, path) if is_url(path) else read()


def list_files(prefix: str) -> list[str]:
    """Every file under `prefix` (recursively), sorted; none if it does not exist."""
    fs, inner = filesystem(prefix)
    found = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return sorted(_url(prefix, f.path) for f in found if f.type == pafs.FileType.File)


def children(prefix: str) -> list[str]:
    """The files and folders directly under `prefix` (a folder's or a prefix's), sorted."""
    fs, inner = filesystem(prefix)
    found = fs.get_file_info(pafs.FileSelector(inner, recursive=False, allow_not_found=True))
    return sorted(_url(prefix, f.path) for f in found)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: `*` and `?` stay within a folder, `**/` spans any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def glob(pattern: str) -> list[str]:
    """Files matching a path or glob (`**` spans folders), sorted, so a run is deterministic."""
    if not is_url(pattern):
        return sorted(p for p in local_glob.glob(pattern, recursive=True) if Path(p).is_file())
    head = _GLOB.search(pattern)
    if head is None:
        return [pattern] if is_file(pattern) else []
    root = pattern[: head.start()].rsplit("/", 1)[0]
    regex = _glob_regex(pattern)
    return [p for p in list_files(root) if regex.match(p)]


def size_and_mtime(path: str) -> tuple[int, int]:
    """What identifies a file's version for a fingerprint; (0, 0) for what is not a file (a hub id)."""
    try:
        found = info(path)
    except (OSError, ValueError):
        return 0, 0
    if found.type != pafs.FileType.File:
        return 0, 0
    return found.size, found.mtime_ns or 0


# --- writing --------------------------------------------------------------------------------------


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: one object PUT, or a temporary local file renamed into place."""
    if not is_url(path):
        tmp = f"{path}.tmp{os.getpid()}"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)
        return
    fs, inner = filesystem(path)

    def put() -> None:
        with fs.open_output_stream(inner, compression=None) as f:  # None: pyarrow would gzip a `.gz` name again
            f.write(data)

    retried(put, path)


def write_parquet(table: pa.Table, path: str, **options: Any) -> None:
    """`pq.write_table` to a local path or an object (an object appears whole once uploaded)."""
    fs, inner = filesystem(path)
    if not is_url(path):
        os.makedirs(os.path.dirname(inner), exist_ok=True)
    retried(lambda: pq.write_table(table, inner, filesystem=fs, **options), path)


def move(source: str, target: str) -> None:
    """A file moved to `target` in the same store (a rename locally; a copy, then a delete, in object storage)."""
    if not is_url(source):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        os.replace(source, target)
        return
    fs, inner = filesystem(source)
    retried(lambda: fs.copy_file(inner, filesystem(target)[1]), target)
    delete(source)


@contextmanager
def parquet_writer(path: str, schema: pa.Schema, **options: Any) -> Iterator[pq.ParquetWriter]:
    """A `pq.ParquetWriter` to a local path or an object (an object appears whole once closed)."""
    fs, inner = filesystem(path)
    if not is_url(path):
        os.makedirs(os.path.dirname(inner), exist_ok=True)
    with fs.open_output_stream(inner, compression=None) as sink, pq.ParquetWriter(sink, schema, **options) as writer:
        yield writer


def delete(path: str) -> None:
    """A file, or a folder / prefix with everything under it; nothing if it does not exist."""
    if not is_url(path):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        return
    fs, inner = filesystem(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.File:
        fs.delete_file(inner)
    elif kind == pafs.FileType.Directory:
        fs.delete_dir(inner)


# --- a local copy of remote files -----------------------------------------------------------------


def download(path: str, target: Path) -> Path:
    """`path` copied to the local `target` (written aside and renamed: a partial copy is never seen);
    kept if it is already there with the same size (callers copy immutable, committed files)."""
    found = info(path)
    if target.exists() and target.stat().st_size == found.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    fs, inner = filesystem(path)

    def get() -> None:
        with fs.open_input_stream(inner, compression=None) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)

    retried(get, path)
    os.replace(tmp, target)
    return target


def upload(local: Path, path: str) -> None:
    """A local file copied to `path` (one atomic object, or a local file renamed into place)."""
    if not is_url(path):
        if os.path.abspath(local) != os.path.abspath(path):
            write_bytes(path, local.read_bytes())
        return
    fs, inner = filesystem(path)

    def put() -> None:
        with open(local, "rb") as src, fs.open_output_stream(inner, compression=None) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)

    retried(put, path)
