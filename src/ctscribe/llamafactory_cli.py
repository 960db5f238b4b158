"""LLaMA-Factory as an engine: find its command, hand it a YAML file, stream what it prints.

LLaMA-Factory 0.9.5 pins older torch, transformers and peft than ctscribe (torch 2.11, transformers
<= 5.6), so it cannot share ctscribe's environment. It lives in its own (``make lf-env`` builds
``.venv-lf``) and ctscribe only ever runs ``llamafactory-cli`` as a program, with a YAML file
written from ctscribe's recipe: no web UI, no edited version checks (``DISABLE_VERSION_CHECK=1`` is
LLaMA-Factory's own switch for running beside newer packages). The models, adapters and data both
sides read and write are plain Hugging Face folders, so neither needs the other's code.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ctscribe.atomic import atomic_write_text
from ctscribe.environments import child_environment, find_program

CLI_NAME = "llamafactory-cli"
ENV_DIR = ".venv-lf"
CLI_ENV_VAR = "CTSCRIBE_LLAMAFACTORY_CLI"
# The last lines of LLaMA-Factory's output repeated in the error when it fails.
ERROR_TAIL_LINES = 40
# Seconds for .venv-lf's interpreter to say whether it has a module: it starts and looks the name up
# without importing it, well under a second on a warm machine; a cold disk can take a few.
PROBE_TIMEOUT_S = 30


class LlamaFactoryError(RuntimeError):
    """LLaMA-Factory is missing or failed; the message says what to do or shows its last output."""


def find_cli(explicit: str | os.PathLike | None = None) -> Path:
    """The ``llamafactory-cli`` to run: ``explicit`` (``--llamafactory-cli``),
    ``$CTSCRIBE_LLAMAFACTORY_CLI``, ``.venv-lf`` in the current folder or the source checkout, then
    ``llamafactory-cli`` on the PATH (:func:`ctscribe.environments.find_program`)."""
    return find_program(
        CLI_NAME,
        ENV_DIR,
        CLI_ENV_VAR,
        explicit,
        LlamaFactoryError,
        "run `make lf-env` in the ctscribe checkout, or pass --llamafactory-cli PATH",
    )


def write_config(path: Path, config: dict) -> Path:
    """Write a LLaMA-Factory YAML config atomically (a killed run never leaves half a config)."""
    return atomic_write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _environment() -> dict[str, str]:
    """The child's environment: ctscribe's packages out of reach, LLaMA-Factory's version check off."""
    return child_environment(DISABLE_VERSION_CHECK="1")


def run_cli(cli: Path, command: str, config: Path, log_path: Path, echo: bool = True) -> None:
    """Run ``llamafactory-cli COMMAND CONFIG``, streaming its output to ``log_path`` (and stderr).

    Raises :class:`LlamaFactoryError` with the last lines of its output when it fails. Ctrl-C stops
    the child too, so no training process is left running without its parent.
    """
    tail: collections.deque[str] = collections.deque(maxlen=ERROR_TAIL_LINES)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        process = subprocess.Popen(
            [str(cli), command, str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_environment(),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                tail.append(line)
                if echo:
                    sys.stderr.write(line)
            code = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
    if code != 0:
        raise LlamaFactoryError(
            f"{CLI_NAME} {command} {config} failed (exit {code}); its last lines:\n"
            + "".join(tail)
            + f"full output: {log_path}"
        )


def has_module(cli: Path, module: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether LLaMA-Factory's interpreter (beside its CLI) can import ``module``.

    The probe runs before training starts; a hung interpreter (a stalled network file system, a
    site hook that waits) would otherwise hang ``ctscribe train`` before it printed anything.
    """
    python = cli.parent / "python"
    if not python.is_file():
        return False
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        done = subprocess.run([str(python), "-c", probe], env=_environment(), check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LlamaFactoryError(
            f"{python} did not say within {timeout:g} s whether it can import {module}; "
            f"check that `{python} -c 'import sys'` starts"
        ) from None
    return done.returncode == 0
