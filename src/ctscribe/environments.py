"""Programs that run in an environment of their own (``make lf-env``, ``make metrics-env``): finding
them, and the environment variables they start with.

Some tools pin packages ctscribe's environment cannot hold (LLaMA-Factory: older torch and
transformers; the clinical entity metrics: spaCy with numpy < 2, transformers 4). Each lives in a
virtual environment beside the checkout, and ctscribe only ever runs it as a program.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def checkout_root() -> Path:
    """The source checkout ctscribe runs from (where ``make`` builds the environments)."""
    return Path(__file__).resolve().parents[2]


def find_program(
    name: str,
    env_dir: str,
    env_var: str,
    explicit: str | os.PathLike | None,
    error: type[Exception],
    hint: str,
    search_path: bool = True,
) -> Path:
    """The executable ``name`` to run.

    In order: ``explicit`` (a command-line option), ``$env_var``, ``env_dir/bin/name`` in the current
    folder or the source checkout, then (with ``search_path``) ``name`` on the PATH. An explicit
    path that is wrong raises ``error`` rather than falling through, so a typo never silently runs
    another installation; so does finding nothing, with ``hint`` (how to build the environment).
    """
    for given in (explicit, os.environ.get(env_var) or None):
        if given is not None:
            path = Path(given).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise error(f"{path} is not an executable {name}")
            return path
    for root in (Path.cwd(), checkout_root()):
        path = root / env_dir / "bin" / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(name) if search_path else None
    if found:
        return Path(found)
    raise error(f"{name} of {env_dir} not found: {hint}, or set {env_var}")


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what points an interpreter at ctscribe's packages.

    PYTHONPATH and VIRTUAL_ENV would make the other environment's interpreter import ctscribe's
    (newer or older) packages, exactly the mix the separate environment exists to avoid.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}  # output arrives as it happens
