"""The contract suites and the harness see the services from outside only (no product imports)."""

from __future__ import annotations

import ast

from tests.harness.proc import ROOT

ALLOWED = {"devtools.natsserver"}  # the broker's launcher: developer tooling, not the product


def test_contract_suites_and_harness_import_no_product_code() -> None:
    offenders = []
    for path in sorted(
        [*(ROOT / "tests" / "contract").rglob("*.py"), *(ROOT / "tests" / "harness").rglob("*.py")]
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] in {"shared", "services", "devtools"} and name not in ALLOWED:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
