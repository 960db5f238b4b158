"""The generation backends ``--backend`` names, and the one function that builds the chosen one.

``predict``, ``evaluate`` and ``serve`` (``serve --upstream`` too: it is the ``openai`` backend) build
their backend here, so a flag means the same in every command. Importing this module loads no
backend: torch, vLLM and the openai client load only when their backend is built, which keeps the
CLI's start and ``--help`` fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctscribe.generate.engine import GenerationBackend
    from ctscribe.model_settings import ModelSettings


class Backend(StrEnum):
    transformers = "transformers"
    vllm = "vllm"
    openai = "openai"


class BackendOptionError(ValueError):
    """Options that do not fit the chosen backend; ``option`` names the flag to change."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


def make_backend(
    backend: Backend,
    model: str | None,
    adapter: Path | None,
    settings: ModelSettings,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
) -> GenerationBackend:
    """The ``backend`` serving ``model`` (with ``adapter``) at ``settings``' pixel budget.

    ``transformers`` and ``vllm`` load ``model`` here. ``openai`` is a client of the OpenAI-compatible
    server at ``base_url``: ``model`` is one it serves (None: its only one), ``api_key`` None takes
    CTSCRIBE_API_KEY or OPENAI_API_KEY, and the server applies adapters itself, so an ``adapter`` is
    refused. ``api_key`` is for ``openai`` only.
    """
    budget = {"max_pixels": settings.max_pixels, "min_pixels": settings.min_pixels}
    if backend is Backend.openai:
        if base_url is None:
            raise BackendOptionError("--backend openai needs --base-url", "--base-url")
        if adapter is not None:
            raise BackendOptionError(
                "the upstream server applies adapters (vLLM: --lora-modules); drop --adapter and give the "
                "adapter's served name as --model",
                "--adapter",
            )
        from ctscribe.generate.openai_engine import OpenAIEngine

        return OpenAIEngine(base_url, model, api_key=api_key, **budget)
    if backend is Backend.vllm:
        from ctscribe.generate.vllm_engine import VLLMEngine

        return VLLMEngine(model, adapter, **budget)
    from ctscribe.generate.engine import TransformersEngine

    return TransformersEngine(model, adapter, **budget)
