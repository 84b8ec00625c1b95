"""Writing files so that a crash never leaves half of one where a reader (or a resumed run) looks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` then rename onto `path`: readers (and a re-run after a crash) see the whole
    file or none of it; a leftover temporary file matches no `*.parquet` pattern."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
