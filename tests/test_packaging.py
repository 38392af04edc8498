"""Issue 12 point 19: the sdist ships the package, its docs and change log and no tests
(which need the repository's harness), and builds without setuptools' warnings. Issue 13 point
6: the real-peer harness (``peers/``) is in neither the sdist nor the wheel."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_and_wheel_are_complete_and_build_without_warnings(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "would be ignored" not in log
    assert "SetuptoolsDeprecationWarning" not in log

    [sdist] = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(
        ["git", "ls-files", "flask_mailoauth", "docs", "tests", "peers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        if name.startswith(("tests/", "peers/")):
            assert name not in names, f"{name}: tests and their harness are left out of the sdist"
        else:
            assert name in names, f"{name} is missing from the sdist"
    for name in ("CHANGES.rst", "LICENSE", "README.md", "MANIFEST.in", "setup.cfg"):
        assert name in names
    assert not [n for n in names if n.endswith((".pyc", ".pyo")) or "/_build/" in n]

    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
    for name in tracked:
        if name.startswith("flask_mailoauth/"):
            assert name in files, f"{name} is missing from the wheel"
    assert not [n for n in files if n.startswith(("tests/", "peers/", "docs/", "example_app/"))]


#: install requirements whose import name is not their distribution name
IMPORT_NAMES = {"pyjwt": "jwt", "flask-wtf": "flask_wtf", "flask-sqlalchemy": "flask_sqlalchemy"}


def imported_modules(package: Path) -> set[str]:
    """The top-level names every module of ``package`` imports, function-level imports included."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_install_requirement_is_imported_by_the_package():
    """Issue 13 point 8: no install requirement the package never imports."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = setup["options"]["install_requires"].splitlines()
    distributions = [re.match(r"[A-Za-z0-9_.-]+", line).group().lower() for line in lines if line]
    imported = imported_modules(ROOT / "flask_mailoauth")
    unused = [
        name
        for name in distributions
        if IMPORT_NAMES.get(name, name.replace("-", "_")) not in imported
    ]
    assert distributions
    assert unused == []
