"""The business Lambda's own code: what `cdk deploy` copies from lambda_src/ into its bundle.

AWS Lambda best practices, "Minimize your deployment package size to its runtime necessities"
(https://docs.aws.amazon.com/lambda/latest/dg/best-practices.html): the feature side (chunking,
ingest) runs on the operator's machine (`make ingest`), never in the Lambda, so it is not bundled,
and nothing bundled may import it (the import would fail in Lambda, where it is absent).
"""

from __future__ import annotations

import ast

from stacks.bundling import LAMBDA_SRC
from stacks.constructs.rag_api import BUSINESS_BUNDLE

FEATURE_PACKAGE = "feature"


def _imported_modules(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_feature_side_is_not_in_the_business_bundle() -> None:
    bundled = {str(path.relative_to(LAMBDA_SRC)) for path in BUSINESS_BUNDLE.source_files()}
    feature = {
        str(path.relative_to(LAMBDA_SRC)) for path in (LAMBDA_SRC / FEATURE_PACKAGE).rglob("*.py")
    }
    assert {"feature/chunking.py", "feature/ingest.py"} <= feature
    assert "rag/domain/pipeline.py" in bundled and "web/app.py" in bundled
    assert not bundled & feature
    assert not [name for name in bundled if name.endswith(("chunking.py", "ingest.py"))]


def test_no_bundled_module_imports_the_feature_side() -> None:
    importers = [
        str(path.relative_to(LAMBDA_SRC))
        for path in BUSINESS_BUNDLE.source_files()
        if path.suffix == ".py"
        and any(
            m == FEATURE_PACKAGE or m.startswith(f"{FEATURE_PACKAGE}.")
            for m in _imported_modules(path.read_text())
        )
    ]
    assert importers == []
