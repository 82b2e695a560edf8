"""The layout's rules that imports could quietly break (README "Code layout"):

- nothing outside `tests/` imports `tests/` (what the benchmarks and the tests share lives in the
  dev-only `devkit/`);
- the Lambdas' own packages import neither `devkit/`, `tools/` nor the feature side, which are not
  bundled (AWS Lambda best practices: "Minimize your deployment package size to its runtime
  necessities", https://docs.aws.amazon.com/lambda/latest/dg/best-practices.html; a module missing
  from the bundle fails the import at init);
- qdrant-client is not bundled either (`rag.adapters.qdrant_rest` says why): one bundled module,
  the embedded local mode's adapter, imports it, and only from inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = (
    "lambda_src/rag",
    "lambda_src/web",
    "lambda_src/forwarder",
    "lambda_src/authorizer",
    "lambda_src/trace_contract",
)


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


LOCAL_MODE_ADAPTER = "lambda_src/rag/adapters/qdrant_local.py"
"""The one bundled module that may import qdrant_client (Qdrant's embedded local mode)."""


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", ["tools", "devkit", "stacks", "lambda_src"])
def test_nothing_outside_the_tests_imports_them(folder: str) -> None:
    offenders = [
        str(p.relative_to(REPO)) for p in python_files(folder) if "tests" in imported_roots(p)
    ]
    assert offenders == []


def test_the_bundled_packages_import_nothing_that_is_not_bundled() -> None:
    unbundled = {"devkit", "tools", "tests", "feature", "stacks"}
    offenders = {
        str(p.relative_to(REPO)): sorted(imported_roots(p) & unbundled)
        for p in python_files(*BUNDLED)
        if imported_roots(p) & unbundled
    }
    assert offenders == {}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_domain_depends_on_no_adapter_and_no_http_layer() -> None:
    """The domain talks to the outside through rag.domain.ports only; adapters implement them."""
    offenders = {
        str(p.relative_to(REPO)): sorted(
            m for m in imported_modules(p) if m.startswith(("rag.adapters", "web", "fastapi"))
        )
        for p in python_files("lambda_src/rag/domain")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def module_level_imports(path: Path) -> set[str]:
    """Modules imported when `path` itself is imported: every import outside a function body."""
    names: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        pending.extend(ast.iter_child_nodes(node))
    return names


def test_only_the_local_mode_adapter_imports_qdrant_client() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in python_files(*BUNDLED)
        if "qdrant_client" in imported_roots(p) and p != REPO / LOCAL_MODE_ADAPTER
    ]
    assert offenders == []
    assert "qdrant_client" in imported_roots(REPO / LOCAL_MODE_ADAPTER)


def test_the_local_mode_adapter_is_imported_only_inside_functions() -> None:
    """So importing the Lambda's code never reaches qdrant_client (the bundle import test in
    tests/integration/test_bundles.py proves it on the real bundle)."""
    module = "rag.adapters.qdrant_local"
    importers = [p for p in python_files(*BUNDLED) if module in imported_modules(p)]
    assert importers  # QdrantStore.from_settings, for a QDRANT_PATH
    offenders = [str(p.relative_to(REPO)) for p in importers if module in module_level_imports(p)]
    assert offenders == []


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The checks above would catch an offender: an import of each kind is recognised."""
    module = tmp_path / "m.py"
    module.write_text(
        "import tests.fakes\nfrom devkit.fakes import memory\nfrom . import sibling\n"
    )
    assert imported_roots(module) == {"tests", "devkit"}
    lazy = tmp_path / "lazy.py"
    lazy.write_text(
        "import os\ntry:\n    import a.b\nexcept ImportError:\n    pass\n\n\ndef f():\n    import c\n"
    )
    assert module_level_imports(lazy) == {"os", "a.b"}
    assert imported_modules(lazy) == {"os", "a.b", "c"}
