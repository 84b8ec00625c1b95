import sys

from core.extras import require_extra

require_extra("python -m train", "train", ("torch", "transformers", "safetensors", "polars"))
from train.cli import main  # noqa: E402

sys.exit(main())
