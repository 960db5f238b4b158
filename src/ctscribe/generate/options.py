"""The options of the commands that generate (predict, evaluate): each default and its help, once.

Torch-free on purpose: the CLI reads these defaults and help texts when it defines its commands, so
``ctscribe --help`` stays fast; :mod:`ctscribe.generate.engine` and :mod:`ctscribe.predict` read
their defaults from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_NEW_TOKENS = 256  # MedTrinity CT captions average ~150 tokens; room for the longest


@dataclass(frozen=True)
class GenerateOptions:
    """Which backend generates, how many images it answers together, and how long an answer may be."""

    # A name of ctscribe.generate.backends.Backend (the CLI's choices), kept a string here so that
    # this module imports nothing of generate/ (engine.py reads its default from here).
    backend: str = field(
        default="transformers",
        metadata={
            "help": "Generation backend: transformers, vllm (run from .venv-vllm: make vllm-env), or openai: "
            "any OpenAI-compatible server at --base-url (ctscribe serve, vLLM), key from CTSCRIBE_API_KEY."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Images generated together."})
    max_new_tokens: int = field(
        default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Longest description, in tokens."}
    )
