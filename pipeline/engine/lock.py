"""One run per output folder.

- A local folder: an exclusive `flock` on `.lock`, crash-safe (the OS drops it when the process dies).
- Object storage (`s3://`): a lease, the object `_lease.json`. It is created with a conditional
  write (`If-None-Match: *`: of two runs starting together exactly one succeeds), renewed by the live
  run every third of its term with `If-Match` on its own version (a run that lost it notices), and
  deleted at the end. A crashed run stops renewing; once the term is over the next run takes the
  lease over, again conditionally (`If-Match` on the expired version, so one successor wins), and
  says so. Times are the store's own (the object's Last-Modified against the response's Date), so
  the nodes' clocks do not matter. The conditional writes are boto3's (pyarrow's filesystems have
  none); its retries (standard mode, `AWS_MAX_ATTEMPTS`) cover throttling and dropped connections.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from core import storage

LEASE = "_lease.json"
LEASE_SECONDS = float(os.environ.get("ML_EMBED_DATA_LEASE_SECONDS", "60"))


class RunLocked(Exception):
    pass


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"{self.path.parent}: another run (pid {holder}) is using this output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Lease:
    """The lock of an output in S3 (see the module's docstring)."""

    def __init__(self, output: str, seconds: float = LEASE_SECONDS, log: Callable[[str], None] = print):
        import boto3
        from botocore.config import Config

        parts = urlsplit(output)
        self.output, self.bucket, self.key = output, parts.netloc, f"{parts.path.strip('/')}/{LEASE}".lstrip("/")
        self.seconds, self.log = seconds, log
        self.client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:12]}
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _put(self, **condition: str) -> str:
        body = json.dumps({**self.owner, "term_seconds": self.seconds}).encode()
        return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]

    @staticmethod
    def _refused(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
            "412",
        )

    def __enter__(self) -> Lease:
        try:
            self.etag = self._put(IfNoneMatch="*")
        except Exception as exc:
            if not self._refused(exc):
                raise
            self.etag = self._take_over()
        self._renewer = threading.Thread(target=self._renew, name="lease-renewal", daemon=True)
        self._renewer.start()
        return self

    def _take_over(self) -> str:
        current = self.client.get_object(Bucket=self.bucket, Key=self.key)
        holder: dict[str, Any] = json.loads(current["Body"].read() or b"{}")
        now = parsedate_to_datetime(current["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - current["LastModified"]).total_seconds()
        term = float(holder.get("term_seconds", self.seconds))
        who = f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"
        if age < term:
            raise RunLocked(
                f"{self.output}: another run ({who}) holds its lease, renewed {age:.0f} s ago; "
                f"if that run crashed, its lease expires {term - age:.0f} s from now"
            )
        try:
            etag = self._put(IfMatch=current["ETag"])
        except Exception as exc:
            if self._refused(exc):
                raise RunLocked(f"{self.output}: another run took over the expired lease first") from None
            raise
        self.log(
            f"taking over {self.output}: the run holding it ({who}) stopped renewing its lease {age:.0f} s ago "
            f"(term {term:.0f} s); it crashed or lost its connection"
        )
        return etag

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except Exception as exc:
                if self._refused(exc):
                    self.lost = True
                    self.log(f"{self.output}: this run's lease was taken over by another run; stop this one")
                    return
                # a transient failure (after boto3's retries): try again at the next beat

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if not self.lost and self.etag is not None:
            try:
                current = self.client.head_object(Bucket=self.bucket, Key=self.key)
                if current["ETag"] == self.etag:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key)
            except Exception:  # gone already or unreachable: it expires by itself
                pass


def run_lock(output: str | Path, log: Callable[[str], None] = print) -> RunLock | Lease:
    """The lock of a run folder: a lease in object storage, else `flock`."""
    return Lease(str(output), log=log) if storage.is_url(str(output)) else RunLock(Path(output))
