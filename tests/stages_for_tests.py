"""A stage defined outside the project, as a user would add one; in a module Ray's workers can import."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from pipeline.engine.stage import Filter, StageConfig


class ShortConfig(StageConfig):
    stage: Literal["short_queries"]
    max_chars: int = 40
    log: str = ""  # a file that setup() appends a line to, so a test can count the set-ups


class ShortQueries(Filter[ShortConfig]):
    """A test filter: drops queries longer than `max_chars`; records each set-up."""

    config_model = ShortConfig
    reads = ("query_lang",)

    def setup(self) -> None:
        with open(self.config.log, "a", encoding="utf-8") as f:
            f.write("setup\n")

    def filter(self, batch: pa.Table) -> tuple[list[str | None], list[str | None]]:
        long = [len(q) > self.config.max_chars for q in batch.column("query").to_pylist()]
        return ["too_long" if x else None for x in long], ["query over the limit" if x else None for x in long]


class KillConfig(StageConfig):
    stage: Literal["kill_worker"]
    when: str = ""  # while this file exists, the stage kills the process it runs in


class KillWorker(Filter[KillConfig]):
    """A test stage that kills its worker process (as the kernel's out-of-memory killer would) while
    the file `when` exists; otherwise it keeps every row."""

    config_model = KillConfig

    def filter(self, batch: pa.Table) -> tuple[list[str | None], None]:
        import os
        import signal

        if os.path.exists(self.config.when):
            os.kill(os.getpid(), signal.SIGKILL)
        return [None] * batch.num_rows, None
