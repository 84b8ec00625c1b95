"""The package's parts come as pip extras (`pipeline`, `train`): a command whose extra is not installed
says which to install, instead of failing on an import deep inside."""

from __future__ import annotations

import importlib.util
import sys


def require_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """Exit with the pip command to run when any of `modules` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(
            f"{command} needs {', '.join(missing)}, which the '{extra}' extra installs: "
            f'pip install "ml-embed-data[{extra}]"'
        )
