"""The options of ``ctscribe train`` and ``export`` that the recipe does not hold: each default and
its help, written once.

Everything about how a model is trained is the recipe's (:mod:`ctscribe.recipe`); what is here is
which engine runs it and how an export is written. Torch-free on purpose: the CLI reads these
defaults and help texts when it defines its commands, and ``ctscribe --help`` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainOptions:
    """Which engine runs the recipe."""

    engine: str = field(
        default="native",
        metadata={
            "help": "native: ctscribe's transformers + PEFT trainer. llamafactory: the same recipe run by "
            "llamafactory-cli in its own environment (make lf-env); see docs/LLAMAFACTORY.md."
        },
    )


@dataclass(frozen=True)
class ExportOptions:
    """Who merges an adapter into its base, and in which weight type."""

    dtype: str = field(default="bf16", metadata={"help": "Weight type of the merged model."})
    engine: str = field(
        default=TrainOptions.engine,
        metadata={"help": "Who merges: native (PEFT here) or llamafactory (llamafactory-cli export)."},
    )
