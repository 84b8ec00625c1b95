"""Settings files shared by the pipeline and the trainer: a strict pydantic base, paths relative to
the file that names them, and a YAML loader whose errors name the file, line and key.

A leaf module: it imports nothing of this project but `core/storage.py` (paths may be URLs), so
the manifest, the sources and the trainer's config can all build on it without depending on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from core import storage

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """An invalid settings file; `str()` lists every problem as `file:line: key.path: message`."""


class Strict(BaseModel):
    """Base of every settings model: an unknown key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def example(**values: Any) -> ConfigDict:
    """A settings model's example (in its JSON Schema, so in `docs/manifest.md` and editors)."""
    return ConfigDict(json_schema_extra={"examples": [values]})


def from_manifest(path: str, info: ValidationInfo) -> Path:
    """A path written in a manifest, relative to the manifest's folder unless absolute (for the
    validators of sources and stage settings; `load_manifest` passes the folder as `base_dir`)."""
    return Path(path) if Path(path).is_absolute() else Path((info.context or {}).get("base_dir", ".")) / path


def location(path: str, info: ValidationInfo) -> str:
    """A manifest path that may be in object storage: a checked URL as it is (ValueError if its
    scheme is unsupported or it is malformed), else `from_manifest`, absolute."""
    if storage.is_url(path):
        return storage.check_url(path)
    return str(from_manifest(path, info).absolute())


def existing_path(path: str | None, info: ValidationInfo) -> str | None:
    """`from_manifest` for an optional file or folder that must exist, as an absolute path."""
    if path is None:
        return None
    if storage.is_url(path):
        raise ValueError(f"{path!r}: this setting takes a local file or folder")
    resolved = from_manifest(path, info)
    if not resolved.exists():
        raise ValueError(f"no such file or folder: {path!r} (looked for {resolved})")
    return str(resolved.resolve())


def matching_files(path: str, info: ValidationInfo) -> str:
    """`location` for a file or glob (local or in object storage) that must match at least one file."""
    pattern = location(path, info)
    try:
        found = storage.glob(pattern)
    except OSError as exc:  # a store that cannot be reached, a bucket that does not exist, no access
        raise ValueError(f"cannot list {pattern!r}: {exc}") from None
    if not found:
        raise ValueError(f"no file matches {path!r} (looked for {pattern})")
    return pattern


def _locate(node: yaml.Node | None, loc: tuple[Any, ...], tags: frozenset[str]) -> tuple[int | None, tuple[Any, ...]]:
    """1-based line of the YAML node at `loc`, and `loc` without the parts the YAML lacks (pydantic
    adds the tag of a tagged union, e.g. `stages[0].normalize.nfc`, which no user wrote)."""
    line = node.start_mark.line + 1 if node is not None else None
    written: list[Any] = []
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                if part in tags:
                    continue
                written.append(part)  # a missing key: the error belongs to the enclosing mapping
                continue
            key, node = match
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        written.append(part)
    return line, tuple(written)


def _duplicate_keys(node: yaml.Node | None, path: str = "") -> list[tuple[int, str]]:
    """PyYAML keeps the last of two equal keys silently; a manifest with one is almost surely wrong."""
    found: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                found.append((key.start_mark.line + 1, f"{path}{key.value}: duplicate key"))
            seen.add(key.value)
            found += _duplicate_keys(value, f"{path}{key.value}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path.rstrip('.')}[{i}].")
    return found


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_yaml_model(path: str | Path, model: type[M], what: str = "manifest", tags: Iterable[str] = ()) -> M:
    """Parse a YAML file and validate it as `model`; raise ConfigError listing every problem as
    `file:line: key.path: message`. `tags` are the discriminator values of tagged unions in `model`
    (stage names), which pydantic puts in error locations although no user wrote them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML: {exc.problem}") from None
    problems = [f"{path}:{line}: {msg}" for line, msg in _duplicate_keys(node)]
    if not isinstance(data, dict):
        problems.append(f"{path}:1: the {what} must be a mapping of settings")
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return model.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            line, loc = _locate(node, tuple(err["loc"]), frozenset(tags))
            lines.append(f"{path}:{line}: {_format_loc(loc)}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def line_of(path: str | Path, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the key at `loc` in a YAML file, for errors found after validation."""
    return _locate(yaml.compose(Path(path).read_text(encoding="utf-8")), loc, frozenset())[0]
