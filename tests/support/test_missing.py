"""A run without CI names each missing piece and the tests it kept from running; CI=true fails them."""

import os
import subprocess
import sys
from pathlib import Path

from support.missing import TITLE

TESTS = Path(__file__).parents[1]

INNER = """
import pytest

def test_vllm(unavailable):
    unavailable("no .venv-vllm: run `make vllm-env`")

@pytest.mark.parametrize("n", [1, 2])
def test_browser(unavailable, n):
    unavailable("no chromium: run `make chromium`")

@pytest.mark.skipif(True, reason="checks the CPU fallback")
def test_cpu_only():
    pass

def test_plain():
    pass
"""


def _run(tmp_path: Path, ci: str | None, tests: str = INNER) -> subprocess.CompletedProcess:
    """pytest on ``tests`` in a folder of its own, with the plugin as tests/conftest.py loads it."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["support.missing"]\n')
    (tmp_path / "test_engines.py").write_text(tests)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", str(tmp_path)]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_without_ci_each_missing_piece_is_listed_with_its_tests(tmp_path):
    run = _run(tmp_path, ci=None)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout[run.stdout.index(TITLE) :]
    assert "no .venv-vllm: run `make vllm-env`\n    1 tests: test_engines.py (1)" in summary
    assert "no chromium: run `make chromium`\n    2 tests: test_engines.py (2)" in summary
    # An ordinary skip is no missing piece: -rs lists it in pytest's own summary, after this one.
    assert "fallback" not in summary.split("short test summary")[0] and "CPU fallback" in summary
    assert "1 passed, 4 skipped" in run.stdout


def test_under_ci_a_missing_piece_fails_and_a_clean_run_lists_nothing(tmp_path):
    run = _run(tmp_path, ci="true")
    assert run.returncode == 1 and "3 failed, 1 passed, 1 skipped" in run.stdout, run.stdout
    assert "cannot run in CI: no .venv-vllm" in run.stdout and TITLE not in run.stdout
    clean = _run(tmp_path, ci=None, tests="def test_plain():\n    pass\n")
    assert clean.returncode == 0 and "1 passed" in clean.stdout and TITLE not in clean.stdout
