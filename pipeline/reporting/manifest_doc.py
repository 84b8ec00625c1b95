"""`docs/manifest.md`: every key of the manifest, written from the JSON Schema that `python -m pipeline
schema` prints (the schema is built from the settings models and the stage registry), so the
reference cannot drift from the code: a test regenerates it and compares.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

INTRO = """# Manifest reference

Generated from the manifest's JSON Schema (`python -m pipeline schema`; this file:
`python -m pipeline schema --markdown > docs/manifest.md`). Relative paths are relative to the
manifest file. An unknown key, a wrong type or a bad value fails validation before anything runs,
naming the file, the line and the key (`stage1.yaml:12: sources[0].colums: Extra inputs are not
permitted`).
"""


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "oneOf" in prop:
        return "a stage (below)"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {_type(prop['additionalProperties'])}"
    return "null" if kind == "null" else kind


def _limits(prop: dict[str, Any]) -> str:
    bounds = {
        "minimum": ">=",
        "maximum": "<=",
        "exclusiveMinimum": ">",
        "exclusiveMaximum": "<",
        "minItems": "items >=",
        "minLength": "length >=",
    }
    return ", ".join(f"{sign} {prop[k]}" for k, sign in bounds.items() if k in prop)


def _section(name: str, model: dict[str, Any], level: str = "##") -> list[str]:
    lines = [f"{level} {name}", ""]
    if model.get("description"):
        lines += [" ".join(model["description"].split()), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    required = set(model.get("required", []))
    for key, prop in model.get("properties", {}).items():
        default = (
            "required"
            if key in required
            else f"`{json.dumps(prop['default'], ensure_ascii=False)}`"
            if "default" in prop
            else ""
        )
        meaning = " ".join(prop.get("description", "").split())
        limits = _limits(prop)
        meaning = (f"{meaning} ({limits})" if limits else meaning).replace("|", "\\|")
        lines.append(f"| `{key}` | {_type(prop)} | {default} | {meaning} |")
    for example in model.get("examples", [])[:1]:
        lines += [
            "",
            "```yaml",
            yaml.safe_dump(example, sort_keys=False, allow_unicode=True, width=110).rstrip(),
            "```",
        ]
    return lines + [""]


def _referenced(node: Any, defs: dict[str, Any], seen: list[str] | None = None) -> list[str]:
    """Settings objects in the order the manifest first names them (depth first)."""
    seen = [] if seen is None else seen
    if isinstance(node, dict):
        ref = node.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref not in seen:
            seen.append(ref)
            _referenced(defs[ref], defs, seen)
        for key, value in node.items():
            if key not in ("$defs", "oneOf"):
                _referenced(value, defs, seen)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, defs, seen)
    return seen


def markdown(schema: dict[str, Any]) -> str:
    """The reference: the manifest's top-level keys, the settings objects and sources they hold, then
    one section per stage, in the registry's order."""
    defs = schema["$defs"]
    lines = [INTRO, *_section("Manifest (top level)", schema)]
    stages = [ref["$ref"].rsplit("/", 1)[-1] for ref in schema["properties"]["stages"]["items"]["oneOf"]]
    named = _referenced(schema, defs)
    for name in [n for n in named if n not in stages] + [n for n in defs if n not in named and n not in stages]:
        lines += _section(name, defs[name])
    lines += [
        "## Stages",
        "",
        "Each entry of `stages:` names its stage with `stage:`; the stages run in the order listed.",
        "",
    ]
    for name in stages:
        stage = defs[name]["properties"]["stage"]["const"]
        lines += _section(f"`{stage}` ({name})", {**defs[name], "title": name}, "###")
    return "\n".join(lines).rstrip() + "\n"
