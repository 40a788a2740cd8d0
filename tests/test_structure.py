"""The package's shape: concepts in their own modules, the run loop short, architectures behind the registry."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "saejax"
MAX_PACKAGE_IMPORTS = 8
MAX_LOOP_LINES = 250


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported_modules(name: str) -> set[str]:
    """The package modules `name` imports (a name imported from a package counts as its submodule
    when it is one, else as the package)."""
    path, found = MODULES[name], set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in found if m in MODULES and m != name}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_more_than_eight_others(name):
    assert len(_imported_modules(name)) <= MAX_PACKAGE_IMPORTS, sorted(_imported_modules(name))


def test_the_run_loop_is_short():
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= MAX_LOOP_LINES


def test_no_architecture_checks_outside_the_architecture_modules():
    checks = re.compile(r"arch ==|arch in \(")
    found = [f"{p}:{i}" for p in PACKAGE.rglob("*.py") if "sae" not in p.relative_to(PACKAGE).parts[:1]
             for i, line in enumerate(p.read_text().splitlines(), 1) if checks.search(line)]
    assert not found


def test_the_counter_sees_imports():
    """The import count is not vacuous: the loop imports the step, and the package's public API
    imports nothing until a name is used."""
    assert "saejax.step" in _imported_modules("saejax.train")
    assert _imported_modules("saejax") == set()
