"""The GPU figures in one call, as one JSON document: the trainer against sentence-transformers'
Matryoshka2dLoss (`bench/trainer_vs_st.py`: BERT-base sized, 12 x 768, vocabulary 32k, batch 256, bf16;
MRL+MLL and MRL+MLL+MEL; samples/s, tokens/s, MFU on real tokens, padding share, host syncs per step),
dense mining against sentence-transformers' `mine_hard_negatives` (`bench/mining_dense.py`: the whole
mining step and the run), and the card, driver, torch and CUDA versions. `--tiny` runs the same on a
CPU in seconds (a test runs it so, so the script cannot rot).

    bash bench/gpu_check.sh [--tiny] > gpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = {
    "trainer": [
        "--device",
        "cuda",
        "--hidden",
        "768",
        "--layers",
        "12",
        "--vocab",
        "32000",
        "--batch",
        "256",
        "--steps",
        "30",
        "--warmup",
        "5",
        "--repeats",
        "3",
        "--syncs",
    ],
    "mining": ["--repeats", "3"],
}
TINY = {
    "trainer": [
        "--device",
        "cpu",
        "--hidden",
        "32",
        "--layers",
        "2",
        "--vocab",
        "600",
        "--batch",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--syncs",
    ],
    "mining": ["--repeats", "1", "--languages", "en", "--layers", "1", "--hidden", "32"],
}


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    else:
        info["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return info


def run(script: str, args: list[str], json_out: Path | None = None) -> dict:
    """A bench script's JSON figures (from its stdout, or the file it writes)."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, *(["--json", str(json_out)] if json_out else [])],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        return {"error": result.stderr[-2000:]}
    figures = json.loads(json_out.read_text() if json_out else result.stdout[result.stdout.index("{") :])
    return {**figures, "bench_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tiny", action="store_true", help="small sizes on the CPU: checks the script, measures nothing"
    )
    parser.add_argument(
        "--shards", default=str(ROOT / "runs" / "stage1"), help="a run whose shards the trainer draws batches from"
    )
    args = parser.parse_args()
    sizes = TINY if args.tiny else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = {
            "environment": environment(),
            "tiny": args.tiny,
            "trainer": run("trainer_vs_st.py", [*sizes["trainer"], "--shards", args.shards]),
            "mining": run("mining_dense.py", sizes["mining"], Path(tmp) / "mining.json"),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
