"""The ``openai`` backend: generation by any OpenAI-compatible server (``ctscribe serve``, vLLM).

This is how predict and evaluate scale out: run ``ctscribe serve`` (or vLLM's OpenAI server on an
exported model, docs/SERVE.md) on GPU machines and point ``--backend openai --base-url URL`` at it.
Images still go through ctscribe's image path here, so the server receives exactly the pixels the
model was trained on, as PNG in a base64 ``data:`` URL. The server is asked to keep special tokens, so
boxes arrive with their grounding markers (ctscribe.generate.decoding). A batch is sent as concurrent
requests, which the server batches again on its side. ``ctscribe serve --upstream`` forwards through
this client too.

Whatever goes wrong on the way to the server (it is down, refuses the key, does not serve the model)
becomes a :class:`ServerError` with one sentence that says so, never a client library's traceback.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
import queue
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ctscribe.ct.images import ImageOptions
from ctscribe.generate.decoding import KEEP_SPECIAL_TOKENS, drop_control_tokens
from ctscribe.generate.engine import GenerationRequest, GenerationResult, ImagePathMixin
from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.models.family import ImageGrid

TIMEOUT_S = 600  # a long description on a busy CPU server takes minutes
RETRIES = 3  # the client retries 503 (queue full) and connection errors, with backoff


class ServerError(RuntimeError):
    """The model server could not be used; ``str()`` is one sentence for the user."""


def server_error_message(error: Exception, base_url: str) -> str:
    """One sentence for an OpenAI client error: the server's own message for 4xx/5xx, never a traceback."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return f"the model server at {base_url} did not answer in time; try again"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach the model server at {base_url}; is it running?"
    if isinstance(error, openai.APIStatusError):
        body = error.body
        detail = body.get("message") if isinstance(body, dict) else None
        detail = detail if isinstance(detail, str) and detail else error.response.reason_phrase
        if error.status_code == 401:
            return f"the model server refused the API key (HTTP 401): {detail}"
        if error.status_code == 404:
            return f"the model server at {base_url} has no such model or route (HTTP 404): {detail}"
        if error.status_code == 503:
            return f"the model server is busy (HTTP 503): {detail}; try again in a few seconds"
        return f"the model server refused the request (HTTP {error.status_code}): {detail}"
    return f"the model server at {base_url} failed: {type(error).__name__}"


def choose_model(served: list[str], model: str | None, base_url: str) -> str:
    """The served model to use: ``model`` when the server lists it, else its only model.

    A vLLM server with LoRA lists the base first and each adapter after it, so taking the first entry
    silently would use the untuned base: with several, the name must be given.
    """
    listed = ", ".join(served) or "none"
    if model is not None:
        if model not in served:
            raise ServerError(f"the model server at {base_url} does not serve {model!r}; it lists: {listed}")
        return model
    if len(served) != 1:
        raise ServerError(f"the model server at {base_url} serves {listed}: choose one with --model")
    return served[0]


def find_api_key(given: str | None = None) -> str:
    """The key to send: the one given, else ``CTSCRIBE_API_KEY``, else ``OPENAI_API_KEY``; "none" when
    there is none at all, since the openai client insists on a key and servers without one ignore it."""
    return given or os.environ.get("CTSCRIBE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"


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


class OpenAIEngine(ImagePathMixin):
    """A client of an OpenAI-compatible chat completions server."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        grid: ImageGrid = DEFAULT_FAMILY.grid,
        concurrency: int = 8,
        verify: bool = True,
    ) -> None:
        """``verify``: ask the server for its models first, so that a dead server, a refused key or an
        unknown model stops the command before any work (predict, evaluate, serve --upstream). Without
        it (translate, which counts each caption's failure), a given ``model`` is taken on trust.

        ``grid`` sizes the images sent: the served model's family where the caller knows it (serve's
        page, in the server's own process), else the default family's, since an OpenAI-compatible
        server does not say which family it serves."""
        from openai import OpenAI

        self.base_url = base_url
        self.client = OpenAI(
            base_url=base_url, api_key=find_api_key(api_key), timeout=TIMEOUT_S, max_retries=RETRIES
        )
        if verify or model is None:
            served = self._call(lambda: [entry.id for entry in self.client.models.list().data])
            model = choose_model(served, model, base_url)
        self.model = model
        self.name = self.model
        self.image_options = ImageOptions(max_pixels=max_pixels, min_pixels=min_pixels)
        self.grid = grid
        self.concurrency = concurrency

    def _call(self, call):
        """``call()``, with the client's errors (after its retries) as one-sentence ServerErrors."""
        from openai import OpenAIError

        try:
            return call()
        except OpenAIError as error:
            raise ServerError(server_error_message(error, self.base_url)) from error

    def _create(self, request: GenerationRequest, **extra):
        return self.client.chat.completions.create(
            model=self.model,
            messages=openai_messages(request),
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            # The grounding markers are special tokens; min_tokens is vLLM's, which ctscribe serve reads too.
            extra_body={
                **KEEP_SPECIAL_TOKENS,
                **({"min_tokens": request.min_new_tokens} if request.min_new_tokens else {}),
            },
            **extra,
        )

    def generate_one(self, request: GenerationRequest) -> GenerationResult:
        """One request, streamed when it has ``on_text``; raises :class:`ServerError`."""
        start = time.perf_counter()
        if request.on_text is not None:
            return self._call(lambda: self._streamed(request, start))
        response = self._call(lambda: self._create(request))
        choice = response.choices[0]
        return _result(choice.message.content or "", choice.finish_reason, response.usage, start)

    def _streamed(self, request: GenerationRequest, start: float) -> GenerationResult:
        """Stream from the server, passing each piece on: what ``serve --upstream`` relays.

        Whitespace at either end is held back, so the pieces add up to a prefix of the final
        (stripped) text, as :class:`GenerationRequest` promises.
        """
        text, sent, finish, usage = "", "", None, None
        stream = self._create(request, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            usage = chunk.usage or usage
            if not chunk.choices:  # the usage chunk
                continue
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
            if finish == "error":  # ctscribe serve: generation failed after the stream began
                raise ServerError(
                    f"generation failed on the model server at {self.base_url}; its log says why"
                )
            visible = drop_control_tokens(text).strip()
            if len(visible) > len(sent) and visible.startswith(sent):
                request.on_text(visible[len(sent) :])
                sent = visible
        return _result(text, finish, usage, start)

    def text_so_far(self, request: GenerationRequest) -> Iterator[str]:
        """:meth:`generate_one` streamed, as the reply's text so far (grounding markup kept), growing;
        the last item is the whole text. For a caller that shows the reply as it comes (the web
        page). Raises :class:`ServerError`."""
        pieces: queue.SimpleQueue[str] = queue.SimpleQueue()
        with ThreadPoolExecutor(max_workers=1) as pool:
            result = pool.submit(self.generate_one, dataclasses.replace(request, on_text=pieces.put))
            text = ""
            while not (result.done() and pieces.empty()):
                with contextlib.suppress(queue.Empty):
                    text += pieces.get(timeout=0.05)
                    yield text
            whole = result.result().text
        if whole != text:
            yield whole

    def _one_or_error(self, request: GenerationRequest) -> GenerationResult | Exception:
        try:
            return self.generate_one(request)
        except ServerError as error:  # connection, timeout, HTTP errors: after the client's retries
            return error.__cause__ if isinstance(error.__cause__, Exception) else error  # names the kind

    def generate(
        self, requests: Sequence[GenerationRequest], return_exceptions: bool = False
    ) -> list[GenerationResult] | list[GenerationResult | Exception]:
        """Results in request order; with ``return_exceptions``, a failed request's error takes its
        place instead of failing the whole batch (what translate counts per caption)."""
        if not requests:
            return []
        one = self._one_or_error if return_exceptions else self.generate_one
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))


def _result(text: str, finish: str | None, usage, start: float) -> GenerationResult:
    return GenerationResult(
        text=drop_control_tokens(text).strip(),
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        finish_reason="length" if finish == "length" else "stop",
        seconds=time.perf_counter() - start,
    )
