"""The chat logic behind ``/v1/chat/completions``: a validated request in, an answer or a stream out.

:class:`ChatService` is what the route calls (vLLM's serving class in its OpenAI server): it turns
the request's messages and images into a :class:`~ctscribe.generate.engine.GenerationRequest`
(images decoded off the event loop and passed through the engine's image path), queues it on the
batcher, and shapes the result as the protocol's response or its server-sent events
(:mod:`ctscribe.generate.openai_protocol`). A failure is an exception the app maps to its HTTP
status: :class:`RequestError` (400), ``QueueFullError`` (503), ``ServerError`` from an upstream
(502). Requests are logged by id, size and timing only: never their text or images.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from ctscribe import CLINICAL_NOTICE
from ctscribe.conversation.boxes import ImageFrame, Located, locate, reader_text, settled
from ctscribe.ct.images import BadImageError, PreparedImage
from ctscribe.generate.engine import GenerationRequest, GenerationResult
from ctscribe.generate.openai_protocol import (
    DONE_EVENT,
    AssistantMessage,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Choice,
    Delta,
    ImagePart,
    StreamChoice,
    Usage,
)
from ctscribe.serve.batcher import Batcher, QueueFullError
from ctscribe.serve.forwarder import Forwarder

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request; ``str()`` is the message the client gets with HTTP 400."""


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URL, refusing other URLs, bad base64 and oversized images.

    The size is checked on the encoded length first, so a huge upload is refused before decoding.
    """
    if not url.startswith("data:"):
        raise RequestError(
            "image_url must be a base64 data: URL (data:image/png;base64,...); URLs are not fetched"
        )
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise RequestError("image_url data: URL must be base64-encoded (data:image/png;base64,...)")
    if len(payload) * 3 // 4 > max_bytes:
        raise RequestError(f"image larger than the {max_bytes // 2**20} MB limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"image_url is not valid base64: {error}") from None
    if len(data) > max_bytes:
        raise RequestError(f"image larger than the {max_bytes // 2**20} MB limit")
    return data


def engine_messages(
    messages: list[ChatMessage], prepare: Callable[[bytes], PreparedImage], max_bytes: int
) -> tuple[list[dict], list[PreparedImage]]:
    """The protocol's messages as the engine's, plus the prepared images in order."""
    converted, images = [], []
    for message in messages:
        if isinstance(message.content, str):
            converted.append({"role": message.role, "content": message.content})
            continue
        parts = []
        for part in message.content:
            if isinstance(part, ImagePart):
                try:
                    images.append(prepare(decode_data_url(part.url, max_bytes)))
                except BadImageError as error:
                    raise RequestError(f"unusable image: {error}") from None
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part.text})
        converted.append({"role": message.role, "content": parts})
    return converted, images


class Answer:
    """How a reply is shown: for a reader (boxes as "[box n]") or raw, and its boxes in the pixels of
    the request's first image (``frame``; None when the request has no image)."""

    def __init__(self, frame: ImageFrame | None, keep_markup: bool):
        self.frame, self.keep_markup = frame, keep_markup

    def text(self, raw: str) -> str:
        return raw if self.keep_markup else reader_text(raw)

    def shown_so_far(self, raw: str) -> str:
        """What a stream may show of a partial reply: never half a box."""
        return raw if self.keep_markup else reader_text(settled(raw))

    def located(self, raw: str) -> list[Located]:
        """The reply's boxes, in the order of its "[box n]" marks."""
        return locate(raw, self.frame)

    def boxes(self, raw: str) -> list[dict]:
        return [box.as_dict() for box in self.located(raw)]


class ChatService:
    """Answers chat requests through one batcher (or an upstream's forwarder); counts the tokens it
    reported, so ``/health`` can be checked against what clients added up."""

    def __init__(self, batcher: Batcher | Forwarder, model_name: str, max_image_bytes: int):
        self.batcher, self.model_name, self.max_image_bytes = batcher, model_name, max_image_bytes
        self._lock = threading.Lock()
        self.prompt_tokens = self.completion_tokens = 0

    def stats(self) -> dict:
        """The batcher's state and the tokens of every usage reported so far."""
        tokens = {"prompt": self.prompt_tokens, "completion": self.completion_tokens}
        return {**self.batcher.stats(), "tokens": tokens}

    def usage(self, result: GenerationResult) -> Usage:
        """The one place a result's usage is built, and counted."""
        with self._lock:
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
        return Usage.of(result.prompt_tokens, result.completion_tokens)

    async def complete(self, request: ChatRequest) -> ChatResponse | AsyncIterator[str]:
        """The whole answer, or with ``stream`` its server-sent events. Raises :class:`RequestError`,
        the batcher's ``QueueFullError``; a whole answer also the engine's errors."""
        started = time.perf_counter()
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        engine = self.batcher.engine
        try:
            # Decoding and resizing images is CPU work: keep it off the event loop.
            messages, prepared = await asyncio.to_thread(
                engine_messages, request.messages, engine.prepare, self.max_image_bytes
            )
        except RequestError as error:
            log.info("%s refused: %s", request_id, error)
            raise
        answer = Answer(prepared[0].frame if prepared else None, not request.skip_special_tokens)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        on_text = (
            (lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)) if request.stream else None
        )
        generation = GenerationRequest(
            messages,
            [image.image for image in prepared],
            max_new_tokens=request.new_tokens,
            min_new_tokens=request.least_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            on_text=on_text,
        )
        try:
            future = asyncio.wrap_future(self.batcher.submit(generation))
        except QueueFullError:
            log.warning("%s refused: queue full", request_id)
            raise
        log.info("%s queued: %d message(s), %d image(s), stream=%s", request_id, len(messages), len(prepared),
                 request.stream)  # fmt: skip
        if request.stream:
            return self._events(request_id, request.include_usage, future, pieces, answer)
        try:
            result = await future
        except Exception as error:  # the app maps it to 502 (upstream) or 500, with the traceback
            log.warning("%s failed: %s", request_id, type(error).__name__)
            raise
        log.info("%s done: %d tokens in %.2f s", request_id, result.completion_tokens,
                 time.perf_counter() - started)  # fmt: skip
        return ChatResponse(
            id=request_id,
            model=self.model_name,
            choices=[
                Choice(
                    message=AssistantMessage(content=answer.text(result.text)),
                    finish_reason=result.finish_reason,
                )
            ],
            usage=self.usage(result),
            boxes=answer.boxes(result.text),
        )

    def _chunk(self, request_id: str, delta: Delta, finish: str | None = None, **extra) -> str:
        choice = StreamChoice(delta=delta, finish_reason=finish)
        return ChatChunk(id=request_id, model=self.model_name, choices=[choice], **extra).event()

    async def _events(
        self,
        request_id: str,
        include_usage: bool,
        future: asyncio.Future,
        pieces: asyncio.Queue,
        answer: Answer,
    ) -> AsyncIterator[str]:
        """Server-sent events: the role, text pieces as generated, the rest of the text, the finish
        with the boxes, then (when asked) the usage in a chunk of its own with no choices. Pieces are
        what the reader's text gained, so they add up to the whole reply's text."""
        yield self._chunk(request_id, Delta(role="assistant", content=""), clinical_notice=CLINICAL_NOTICE)
        raw, sent = "", ""
        while not (future.done() and pieces.empty()):
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                raw += getter.result()
                shown = answer.shown_so_far(raw)
                if shown.startswith(sent) and len(shown) > len(sent):
                    yield self._chunk(request_id, Delta(content=shown[len(sent) :]))
                    sent = shown
            else:
                getter.cancel()
        try:
            result = future.result()
        except Exception:
            log.exception("%s failed while streaming", request_id)
            yield self._chunk(request_id, Delta(), "error")
            yield DONE_EVENT
            return
        text = answer.text(result.text)
        if text.startswith(sent) and len(text) > len(sent):
            yield self._chunk(request_id, Delta(content=text[len(sent) :]))
        yield self._chunk(request_id, Delta(), result.finish_reason, boxes=answer.boxes(result.text))
        usage = self.usage(result)  # counted whether or not the client asked to see it
        if include_usage:
            yield ChatChunk(id=request_id, model=self.model_name, choices=[], usage=usage).event()
        yield DONE_EVENT
