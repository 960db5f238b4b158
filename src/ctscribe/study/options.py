"""The study step's options that no other step has: which slices of a series are read.

Torch-free, so ``ctscribe --help`` stays fast; the window, batch size and description length are
predict's (:class:`ctscribe.ct.options.InputOptions`, :class:`ctscribe.generate.options.GenerateOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyOptions:
    """``ctscribe study``."""

    slices: str = field(
        default="all", metadata={"help": "all, every:K (every K-th slice) or body (slices that show a body)."}
    )
