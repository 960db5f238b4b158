"""Tests that need a piece this machine lacks (.venv-lf, .venv-vllm, chromium, java): skipped here
and named at the end of the run, failed under ``CI=true``.

``make test`` builds every piece it can and goes on without the rest; a green run must still say
which engines it never ran. tests/conftest.py takes the ``unavailable`` fixture and the
``pytest_terminal_summary`` hook from here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import NoReturn

import pytest

PREFIX = "missing here: "  # starts the skip reason of every test that ``unavailable`` skips
TITLE = "not run: a piece is missing here (CI=true fails these)"


def in_ci() -> bool:
    """Whether ``CI`` is set to anything but an empty or false value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def unavailable() -> Callable[[str], NoReturn]:
    """Call with what a test is missing: it is skipped here, but fails under CI=true, where the
    repository's own install steps (make test) must have provided everything."""

    def report(missing: str) -> NoReturn:
        if in_ci():
            pytest.fail(f"cannot run in CI: {missing}")
        pytest.skip(PREFIX + missing)

    return report


def missing_pieces(skipped: list[pytest.TestReport]) -> dict[str, Counter[str]]:
    """What was missing -> skipped tests per test file, from the skips ``unavailable`` made."""
    groups: dict[str, Counter[str]] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(PREFIX):
            groups.setdefault(reason[len(PREFIX) :], Counter())[report.nodeid.split("::")[0]] += 1
    return groups


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """List each missing piece with the tests it kept from running, so a green run hides none."""
    groups = missing_pieces(terminalreporter.stats.get("skipped", []))
    if not groups:
        return
    terminalreporter.section(TITLE, yellow=True, bold=True)
    for missing, files in sorted(groups.items()):
        where = ", ".join(f"{name} ({count})" for name, count in sorted(files.items()))
        terminalreporter.line(f"{missing}\n    {sum(files.values())} tests: {where}")
