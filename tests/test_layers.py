"""Imports run one way: models <- router <- training, serving; training and serving never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> the project packages it must never import
FORBIDDEN = {
    "models": {"router", "training", "serving", "thrifty"},
    "router": {"training", "serving", "thrifty"},
    "training": {"serving", "thrifty"},
    "serving": {"training", "thrifty"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imports_run_one_way():
    offences = []
    for package, forbidden in FORBIDDEN.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for path in files:
            wrong = imported_packages(path) & forbidden
            if wrong:
                offences.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert offences == []
