"""The layers: no import cycle among the project's modules, dependencies pointing one way between
packages, and the trainer importable without Ray (a GPU box may have only torch and transformers)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ("core", "langid", "sources", "pipeline", "train")
# What each layer may import from the project (a prefix allows the package and its modules; a
# trailing `$` the module alone). `core` is the kernel everyone stands on (storage, record schema,
# tasks, passage table, settings, extras, the plotly page) and imports nothing above it; `langid` sits
# beside it; `sources` (reading and mapping inputs) above them; the pipeline's layers and the trainer
# side by side above that. The engine takes only the version from `pipeline`; the trainer takes
# nothing of the pipeline (it runs on GPU boxes without Ray).
ALLOWED = {
    "core": ("core",),
    "langid": ("langid", "core"),
    "sources": ("sources", "core", "langid"),
    "pipeline.ops": ("pipeline.ops", "core", "sources", "langid"),
    "pipeline.engine": ("pipeline.engine", "pipeline.ops", "core", "sources", "langid", "pipeline$"),
    "pipeline.stages": ("pipeline.stages", "pipeline.engine", "pipeline.ops", "core", "sources", "langid"),
    "pipeline.reporting": ("pipeline.reporting", "pipeline.engine", "pipeline.ops", "core", "sources", "langid"),
    "pipeline.export": ("pipeline.export", "pipeline.engine", "core"),
    "pipeline.tools": (
        "pipeline.tools",
        "pipeline.stages",
        "pipeline.engine",
        "pipeline.ops",
        "pipeline.reporting",
        "core",
        "sources",
        "langid",
    ),
    "pipeline": ("pipeline", "core", "sources", "langid"),
    "train": ("train", "core"),
}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Project modules `name` imports at run time (anywhere in the file, `if TYPE_CHECKING:` aside)."""
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}


def test_no_import_cycle():
    graph = _graph()
    colour: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        colour[node] = 1
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in colour:
                visit(nxt, path + [nxt])
        colour[node] = 2

    for start in sorted(graph):
        if start not in colour:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_one_way():
    wrong = []
    for module, imports in _graph().items():
        layer = max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len)
        for target in sorted(imports):
            if not any(
                target == a.rstrip("$") or (not a.endswith("$") and target.startswith(a + ".")) for a in ALLOWED[layer]
            ):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package):
    """Importing a package first, in a fresh interpreter, works (no hidden import-order need)."""
    modules = sorted(m for m in _graph() if m == package or m.startswith(package + ".") and not m.endswith("__main__"))
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_trainer_never_imports_ray():
    code = (
        "import sys, train.loop, train.cli, train.config, train.data, train.feed, train.pieces, "
        "train.evaluate, train.export\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'fasttext', 'pipeline'))\n"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


PIPELINE_ONLY = {
    "ray",
    "fasttext-numpy2-wheel",
    "datasets",
    "bm25s",
    "numba",
    "pycountry",
    "xxhash",
    "datatrove",
    "zstandard",
}


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution that installing `requirements` pulls in, read from the installed packages'
    own metadata (the environment has all of them: the dev extra includes the train extra)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [(Requirement(r), {""}) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            deps = requires(name) or []
        except PackageNotFoundError:  # an optional dependency of another platform or Python
            continue
        extras = {""} | set(req.extras)
        for dep in map(Requirement, deps):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append((dep, extras))
    return seen


def test_the_train_extra_installs_no_pipeline_stack():
    """`pip install "ml-embed-data[train]"` (what a GPU training box runs) pulls in no Ray, fastText,
    or other pipeline-only package; the pipeline extra does (so the check can fail)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, extras = project["dependencies"], project["optional-dependencies"]
    assert not _closure(base + extras["train"]) & PIPELINE_ONLY
    assert {"ray", "fasttext-numpy2-wheel"} <= _closure(base + extras["pipeline"])


def test_a_missing_extra_names_the_pip_command():
    code = (
        "from core.extras import require_extra; "
        "require_extra('python -m train', 'train', ('torch', 'no_such_module_xyz'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (
        "python -m train needs no_such_module_xyz, which the 'train' extra installs: "
        'pip install "ml-embed-data[train]"'
    ) in result.stderr
