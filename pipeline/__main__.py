import sys

from core.extras import require_extra

if __name__ == "__main__":  # not when a worker process re-imports this module (multiprocessing spawn)
    require_extra("python -m pipeline", "pipeline", ("ray", "polars", "fasttext", "datasets"))
    from pipeline.cli import main

    sys.exit(main())
