"""The package's shape: every module imports by its dotted path, and imports among the modules go one way only."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import visfocus as vf

PACKAGE = Path(vf.__file__).parent
ROOT = PACKAGE.parent
REPO = ROOT.parent


def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _module_names()


def _imports(name: str) -> set[str]:
    """The package modules ``name`` imports (at any depth of its code, lazy imports included)."""
    path = ROOT / Path(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES] or [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def test_the_package_has_its_layers():
    assert {"visfocus.steer", "visfocus.models", "visfocus.interventions", "visfocus.benchmarks", "visfocus.api",
            "visfocus.cli", "visfocus.interventions.vcd", "visfocus.benchmarks.whatsup"} <= set(MODULES)


NEEDS_LMMS_EVAL = ("visfocus.integrations.lmms.model", "visfocus.integrations.lmms.manifest",
                   "visfocus.integrations.lmms.tasks")  # importable with the [lmms] extra and lmms-eval (README)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_by_its_dotted_path(name):
    if name in NEEDS_LMMS_EVAL:
        pytest.importorskip("lmms_eval")
    module = importlib.import_module(name)
    reached = importlib.import_module(name.split(".")[0])
    for part in name.split(".")[1:]:  # `import visfocus.interventions.vcd as m` resolves attribute by attribute
        reached = getattr(reached, part)
    assert reached is module


def test_the_public_calls_are_functions_beside_the_subpackages():
    import visfocus.benchmarks.vsr as vsr
    import visfocus.interventions.vcd as vcd

    assert "vcd" in vf.methods() and vcd.VCD.name == "vcd"
    assert "vsr_random_dev" in vf.tasks() and vsr.VSRTask.__name__ == "VSRTask"


def test_no_import_circle_among_the_modules():
    graph = {name: _imports(name) for name in MODULES}
    circles, done, stack = [], set(), []

    def visit(name: str) -> None:
        if name in stack:
            circles.append(" -> ".join([*stack[stack.index(name):], name]))
            return
        if name in done:
            return
        stack.append(name)
        for target in sorted(graph[name]):
            visit(target)
        stack.pop()
        done.add(name)

    for name in MODULES:
        if name != "visfocus":  # the package's own re-exports sit above every layer
            visit(name)
    assert circles == []


@pytest.mark.parametrize("lower, higher", [
    ("visfocus.steer", ("visfocus.models", "visfocus.interventions", "visfocus.api", "visfocus.benchmarks")),
    ("visfocus.models", ("visfocus.interventions", "visfocus.api", "visfocus.benchmarks", "visfocus.evaluate")),
    ("visfocus.interventions", ("visfocus.api", "visfocus.evaluate", "visfocus.sweep", "visfocus.cli",
                                "visfocus.profile_layers", "visfocus.app")),
    ("visfocus.app", ("visfocus.steer", "visfocus.models", "visfocus.cli")),  # the public API and traces only
    ("visfocus.integrations", ("visfocus.steer", "visfocus.models", "visfocus.cli", "visfocus.app")),  # the same
    ("visfocus.evaluate", ("visfocus.integrations",)),
    ("visfocus.api", ("visfocus.integrations",)),
])
def test_layers_import_downward_only(lower, higher):
    upward = {(name, target) for name in MODULES if name == lower or name.startswith(lower + ".")
              for target in _imports(name) if any(target == h or target.startswith(h + ".") for h in higher)}
    assert upward == set()


# --- the contract between the engine and the methods ---------------------------------------------------------------
METHOD_MODULES = sorted({cls.__module__ for cls in vf.METHODS.values()})
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def _source(name: str) -> str:
    path = ROOT / Path(*name.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("visfocus.interventions")])
def test_methods_reach_the_model_only_through_the_engine(name):
    calls = {node.func.attr for node in ast.walk(ast.parse(_source(name)))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not calls & {"register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook"}


@pytest.mark.parametrize("name", METHOD_MODULES)
def test_no_method_module_imports_another(name):
    assert _imports(name) & set(METHOD_MODULES) == set()


def test_every_module_is_small_and_its_functions_short():
    too_long = []
    for name in MODULES:
        source = _source(name)
        if len(source.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def test_no_module_cites_a_document_the_repository_lacks():
    """Every Markdown file the code, tests, benchmarks or docs name is in the repository (``docs/...`` exactly
    there; a bare name such as ``MODEL_CARD.md`` somewhere in it) — the package's users can read what it cites. The
    Markdown files visfocus writes (declared where they are written) are outputs, not citations."""
    from visfocus.study_report import REPORT_FILE

    cited = re.compile(r"(?<![\w/.-])((?:docs/)?[A-Za-z_-]+\.md)(?![\w-])")
    shipped = {path.name for path in REPO.rglob("*.md") if ".git" not in path.parts} | {REPORT_FILE}
    missing = set()
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py"),
                 REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "docsgen").glob("*.py"),
                 *(REPO / "scripts").glob("*.py")]:
        for doc in cited.findall(path.read_text(encoding="utf-8")):
            if not ((REPO / doc).exists() if doc.startswith("docs/") else doc in shipped):
                missing.add(f"{path.relative_to(REPO)} cites {doc}")
    assert sorted(missing) == []
