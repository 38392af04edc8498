"""Issue 13 point 6: the real-peer harness is the package ``peers``, not part of ``tests``.

Nothing outside ``tests/`` imports ``tests``; no test module imports another test module (shared
helpers live in modules of their own); the demo sandbox and the benchmarks run where ``tests``
cannot be imported. Imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def python_files(top: Path) -> Iterator[Path]:
    """The repository's own Python files under ``top`` (no virtualenv, peers' installs, caches)."""
    for path in sorted(top.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if not any(p.startswith(".") or p in ("build", "node_modules") for p in parts):
            yield path


def imported_modules(path: Path, source: str | None = None) -> Iterator[str]:
    """Every module the file ``path`` (or ``source`` as if it were that file) imports, anywhere
    in it, relative imports resolved."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def is_test_module(module: str) -> bool:
    return module.split(".")[0] == "tests" and module.split(".")[-1].startswith("test_")


def test_nothing_outside_tests_imports_tests():
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(ROOT)
        if TESTS not in path.parents
        for module in imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]
    assert offenders == []


def test_test_modules_do_not_import_each_other():
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(TESTS)
        for module in imported_modules(path)
        if is_test_module(module)
    ]
    assert offenders == []


def test_the_import_check_sees_relative_and_function_level_imports():
    """The two checks above would catch the imports they exist for."""
    source = "def f():\n    from .test_flow import csrf\n    from .. import stored\n"
    modules = set(imported_modules(TESTS / "e2e" / "probe.py", source))
    assert {"tests.e2e.test_flow", "tests"} <= modules
    assert is_test_module("tests.e2e.test_flow")
    assert not is_test_module("tests.stored")


GUARDED = "import sys\nsys.modules['tests'] = None  # `import tests` now fails\n"


def run_guarded(script: str) -> str:
    """Run ``script`` in a fresh interpreter at the repository root; its output, once it passed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("module", "says"),
    [
        ("example_app", "sandbox"),
        ("benchmarks.run", "--quick"),
    ],
    ids=["demo", "benchmarks"],
)
def test_demo_and_benchmarks_run_without_tests(module, says):
    script = (
        GUARDED
        + "import runpy\n"
        + f"sys.argv = [{module!r}, '--help']\n"
        + f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    assert says in run_guarded(script)


def test_the_sandbox_and_every_benchmark_import_without_tests():
    modules = ["example_app.sandbox", "peers", "peers.plugin"] + [
        f"benchmarks.{p.stem}" for p in sorted((ROOT / "benchmarks").glob("*.py"))
    ]
    script = GUARDED + "".join(f"import {m}\n" for m in modules) + "print('imported')\n"
    assert run_guarded(script).strip() == "imported"
