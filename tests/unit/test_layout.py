"""The layout's rules that imports could quietly break (README "Code layout"):

- nothing outside `tests/` imports `tests/` (what the benchmarks and the tests share lives in the
  dev-only `devkit/`);
- the Lambdas' own packages import neither `devkit/`, `tools/` nor the feature side, which are not
  bundled (AWS Lambda best practices: "Minimize your deployment package size to its runtime
  necessities", https://docs.aws.amazon.com/lambda/latest/dg/best-practices.html; a module missing
  from the bundle fails the import at init).
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


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The checks above would catch an offender: an import of each kind is recognised."""
    module = tmp_path / "m.py"
    module.write_text(
        "import tests.fakes\nfrom devkit.fakes import memory\nfrom . import sibling\n"
    )
    assert imported_roots(module) == {"tests", "devkit"}
