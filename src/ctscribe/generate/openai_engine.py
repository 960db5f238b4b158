"""The ``openai`` backend: generation by any OpenAI-compatible server (``ctscribe serve``, vLLM).

This is how predict and evaluate scale out: run ``ctscribe serve`` (or ``vllm serve`` on an
exported model) on GPU machines and point ``--backend openai --base-url URL`` at it. Images still go
through ctscribe's image path here, so the server receives exactly the pixels the model was trained
on, as PNG in a base64 ``data:`` URL. A batch is sent as concurrent requests, which the server
batches again on its side.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ctscribe.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ImageOptions
from ctscribe.generate.engine import GenerationRequest, GenerationResult, ImagePath

TIMEOUT_S = 600  # a long description on a busy CPU server takes minutes
RETRIES = 3  # the client retries 503 (queue full) and connection errors, with backoff


def image_data_url(image: Image.Image) -> str:
    """A PNG ``data:`` URL: lossless, so the server sees the prepared pixels unchanged."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(request: GenerationRequest) -> list[dict]:
    """The engine's messages in OpenAI's form, image parts filled with the request's images in order."""
    images = iter(request.images)
    converted = []
    for message in request.messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image_url", "image_url": {"url": image_data_url(next(images))}}
                if part["type"] == "image"
                else {"type": "text", "text": part["text"]}
                for part in content
            ]
        converted.append({"role": message["role"], "content": content})
    return converted


class OpenAIEngine(ImagePath):
    """A client of an OpenAI-compatible chat completions server."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        concurrency: int = 8,
    ) -> None:
        from openai import OpenAI

        # The openai client insists on a key; servers without one ignore it.
        api_key = api_key or os.environ.get("CTSCRIBE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=TIMEOUT_S, max_retries=RETRIES)
        self.model = model or self.client.models.list().data[0].id
        self.name = self.model
        self.image_options = ImageOptions(max_pixels=max_pixels, min_pixels=min_pixels)
        self.concurrency = concurrency

    def _one(self, request: GenerationRequest) -> GenerationResult:
        start = time.perf_counter()
        response = self.client.chat.completions.create(
            model=self.model,
            messages=openai_messages(request),
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
        )
        choice = response.choices[0]
        usage = response.usage
        return GenerationResult(
            text=(choice.message.content or "").strip(),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            seconds=time.perf_counter() - start,
        )

    def _one_or_error(self, request: GenerationRequest) -> GenerationResult | Exception:
        from openai import OpenAIError

        try:
            return self._one(request)
        except OpenAIError as error:  # connection, timeout, HTTP errors: after the client's retries
            return error

    def generate(
        self, requests: Sequence[GenerationRequest], return_exceptions: bool = False
    ) -> list[GenerationResult] | list[GenerationResult | Exception]:
        """Results in request order; with ``return_exceptions``, a failed request's error takes its
        place instead of failing the whole batch (what translate counts per caption)."""
        if not requests:
            return []
        one = self._one_or_error if return_exceptions else self._one
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))
