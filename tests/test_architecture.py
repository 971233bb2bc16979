"""The layering of ARCHITECTURE.md holds: the import-linter contract covers every module, and no module but
the CLI (which imports lazily to start fast) hides an import of the suite's own code inside a function."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmarks", "methods")
LAZY_BY_DESIGN = {"benchmarks/cli.py"}


def modules() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def layer_items() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contract = config["tool"]["importlinter"]["contracts"][0]
    return [item.strip() for layer in contract["layers"] for item in layer.replace(":", "|").split("|")]


def test_the_layers_contract_covers_every_module():
    items = layer_items()
    uncovered = [m for m in modules() if m not in PACKAGES[:1]
                 and not any(m == item or m.startswith(item + ".") for item in items)]
    assert not uncovered, f"modules in no layer of pyproject.toml's import-linter contract: {uncovered}"


def test_lint_imports_passes():
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed in this environment (make setup installs it)")
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def own_imports_in_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                name = ",".join(alias.name for alias in node.names)
            else:
                continue
            if name.startswith(".") or name.split(".")[0] in PACKAGES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {func.name}(): import {name}")
    return found


def test_no_own_import_hides_in_a_function():
    found = [hit for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
             if str(path.relative_to(REPO)) not in LAZY_BY_DESIGN for hit in own_imports_in_functions(path)]
    assert not found, "imports inside functions (move them to the top; a cycle means a layer is wrong):\n" + \
        "\n".join(found)
