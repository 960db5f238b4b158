"""The options of ``ctscribe evaluate`` that are its own: each default and its help, written once.

Generation's options (backend, batch size, answer length) are :class:`ctscribe.generate.options.
GenerateOptions`, shared with predict. Torch-free on purpose: the CLI reads these defaults and help
texts when it defines its commands, and ``ctscribe --help`` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvaluateOptions:
    """How an evaluation is reported."""

    examples: int = field(default=24, metadata={"help": "Examples in gallery.html."})
