"""The real ``ctscribe`` command line, run as a user runs it, for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_ctscribe(
    *args: str | Path,
    python: str | Path = sys.executable,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """``python -m ctscribe ARGS`` in a process of its own; the test fails with the end of its stderr
    unless it exits 0. ``python`` picks the environment (``.venv-vllm``'s, say)."""
    done = subprocess.run(
        [str(python), "-m", "ctscribe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done
