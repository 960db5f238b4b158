"""``ctscribe --help`` answers at once: defining the commands loads no heavy library.

The CLI reads each option's default and help from an options dataclass when it defines its commands
(``cli.option``), so those classes live in torch-free modules (``ct/options.py``,
``prepare/options.py``, ...). One moved into a module that imports torch, transformers or the image
path's numpy and PIL would make every ``ctscribe`` call pay seconds before it parses a flag.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "numpy", "PIL", "scipy")


def _loaded(module: str) -> set[str]:
    """The heavy libraries a fresh interpreter has loaded after importing ``module``."""
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_defining_the_commands_loads_no_heavy_library():
    assert _loaded("ctscribe.cli") == set()


def test_the_check_sees_a_heavy_import():
    """Control: the native training engine loads transformers, torch and the image path's numpy and
    PIL, and the check sees them."""
    assert {"torch", "transformers", "numpy", "PIL"} <= _loaded("ctscribe.train.native")
