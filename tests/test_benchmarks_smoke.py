"""The benchmarks still run: the hot path, tiny and on SQLite, without peers or timings."""

from __future__ import annotations

import importlib

import pytest

from benchmarks import hot_path


@pytest.mark.parametrize(
    "module", ["run", "common", "hot_path", "storm", "imap_login", "pages", "bulk", "proxy"]
)
def test_every_benchmark_module_imports(module):
    importlib.import_module(f"benchmarks.{module}")


def test_the_hot_path_issues_no_sql_in_steady_state(tmp_path):
    result = hot_path.measure(f"sqlite:///{tmp_path / 'hot.sqlite3'}", calls=200, batch=50)
    assert result.calls == 200
    assert result.first_call_statements == 1
    assert result.steady_statements == 0
    assert result.baseline_statements == 200  # Flask-Dance's get: one query per call
    rows = hot_path.rows(result, "SQLite")
    assert [row.met for row in rows[1:]] == [True, True]
