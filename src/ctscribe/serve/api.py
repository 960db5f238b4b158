"""The OpenAI-compatible HTTP API: ``/v1/chat/completions``, ``/v1/models`` and ``/health``.

Any OpenAI client works against it: messages with text and ``image_url`` parts (base64 ``data:``
URLs; the server never fetches a URL), ``stream`` with server-sent events, ``max_tokens`` and
``temperature``. It serves one model; the request's ``model`` field is not checked, so clients
written for another name work unchanged.

What ctscribe adds to the protocol, in places of their own that OpenAI clients ignore: the
``X-Clinical-Notice`` header and ``clinical_notice`` field (the output assists, it does not
diagnose), and ``boxes``, where the answer points (:mod:`ctscribe.conversation.boxes`: the phrase,
the box on the model's 0-1000 grid, and in pixels of the request's first image), in the response and
in a stream's last chunk. The message text is for a reader: each box becomes "[box n]" after its
phrase, also while streaming (a box is held back until it is complete); a request with
``"skip_special_tokens": false`` (vLLM's parameter) gets the model's own markup instead, as
``ctscribe evaluate`` and ``serve --upstream`` in front of this server need it. Requests are logged
by id, size and timing only: never their text or images.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ctscribe import CLINICAL_NOTICE
from ctscribe.conversation.boxes import ImageFrame, locate, reader_text, settled
from ctscribe.ct.images import BadImageError, PreparedImage
from ctscribe.generate.engine import DEFAULT_MAX_NEW_TOKENS, GenerationRequest
from ctscribe.generate.openai_engine import ServerError
from ctscribe.serve.batcher import Batcher, QueueFullError
from ctscribe.serve.forwarder import Forwarder

log = logging.getLogger(__name__)

NOTICE_HEADER = "X-Clinical-Notice"
MAX_TOKENS_LIMIT = 2048  # a longer description is a runaway, not a report
RETRY_AFTER_S = 2


class RequestError(ValueError):
    """A bad request; ``str()`` is the message the client gets with HTTP 400."""


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}, "clinical_notice": CLINICAL_NOTICE}
    return JSONResponse(body, status_code=status, headers={NOTICE_HEADER: CLINICAL_NOTICE, **(headers or {})})


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


def _image_url(part: dict) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise RequestError("an image_url part needs image_url.url")
    return url


def parse_messages(messages: object, prepare, max_bytes: int) -> tuple[list[dict], list[PreparedImage]]:
    """OpenAI chat messages as the engine's messages plus the prepared images, in order."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list")
    converted, images = [], []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError("each message needs a role of system, user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError("message content must be a string or a list of parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                try:
                    images.append(prepare(decode_data_url(_image_url(part), max_bytes)))
                except BadImageError as error:
                    raise RequestError(f"unusable image: {error}") from None
                parts.append({"type": "image"})
            else:
                raise RequestError(f"unsupported content part type {kind!r}; use text or image_url")
        converted.append({"role": message["role"], "content": parts})
    return converted, images


def _sampling(body: dict) -> dict:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_NEW_TOKENS))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise RequestError(f"max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}")
    temperature = body.get("temperature", 0.0)
    top_p = body.get("top_p", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise RequestError("temperature must be between 0 and 2")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise RequestError("top_p must be in (0, 1]")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise RequestError("seed must be a whole number")
    if not isinstance(body.get("skip_special_tokens", True), bool):
        raise RequestError("skip_special_tokens must be true or false")
    return {
        "max_new_tokens": max_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "seed": seed,
    }


def create_app(
    batcher: Batcher | Forwarder, *, model_name: str, api_key: str | None = None, max_image_mb: float = 20
) -> FastAPI:
    """The API app around a running :class:`Batcher` (or a :class:`Forwarder` to an upstream server);
    the web page mounts onto it (serve.app)."""
    app = FastAPI(
        title="ctscribe", description=CLINICAL_NOTICE, docs_url="/v1/docs", openapi_url="/v1/openapi.json"
    )
    max_bytes = int(max_image_mb * 2**20)
    engine = batcher.engine

    @app.middleware("http")
    async def authorise(request: Request, call_next):
        """Every /v1 route needs the key when one is set; /health and the page stay reachable."""
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                message = "missing or wrong API key (Authorization: Bearer KEY)"
                return _error(401, message, "authentication_error", {"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        response.headers.setdefault(NOTICE_HEADER, CLINICAL_NOTICE)
        return response

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **batcher.stats()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "ctscribe"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body must be JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object", "invalid_request_error")
        try:
            # Decoding and resizing images is CPU work: keep it off the event loop.
            messages, prepared = await asyncio.to_thread(
                parse_messages, body.get("messages"), engine.prepare, max_bytes
            )
            sampling = _sampling(body)
        except RequestError as error:
            log.info("%s refused: %s", request_id, error)
            return _error(400, str(error), "invalid_request_error")
        images = [image.image for image in prepared]
        answer = _Answer(prepared[0].frame if prepared else None, body.get("skip_special_tokens") is False)
        stream = bool(body.get("stream", False))
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        on_text = (lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)) if stream else None
        try:
            future = batcher.submit(GenerationRequest(messages, images, on_text=on_text, **sampling))
        except QueueFullError as error:
            log.warning("%s refused: queue full", request_id)
            return _error(503, str(error), "server_busy", {"Retry-After": str(RETRY_AFTER_S)})
        log.info(
            "%s queued: %d message(s), %d image(s), stream=%s", request_id, len(messages), len(images), stream
        )
        result_future = asyncio.wrap_future(future)
        if stream:
            return StreamingResponse(
                _events(request_id, model_name, result_future, pieces, answer),
                media_type="text/event-stream",
                headers={NOTICE_HEADER: CLINICAL_NOTICE, "Cache-Control": "no-cache"},
            )
        try:
            result = await result_future
        except ServerError as error:  # serve --upstream: the upstream's own reason, in one sentence
            log.warning("%s failed upstream: %s", request_id, error)
            return _error(502, str(error), "upstream_error")
        except Exception:
            log.exception("%s failed", request_id)
            return _error(500, "generation failed; the server log has the details", "server_error")
        log.info(
            "%s done: %d tokens in %.2f s",
            request_id,
            result.completion_tokens,
            time.perf_counter() - started,
        )
        return JSONResponse(
            {
                "id": request_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text(result.text)},
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
                "clinical_notice": CLINICAL_NOTICE,
                "boxes": answer.boxes(result.text),
            }
        )

    return app


class _Answer:
    """How a reply is shown: for a reader (boxes as "[box n]") or raw, and its boxes in the pixels of
    the request's first image (``frame``; None when the request has no image)."""

    def __init__(self, frame: ImageFrame | None, keep_markup: bool):
        self.frame, self.keep_markup = frame, keep_markup

    def text(self, raw: str) -> str:
        return raw if self.keep_markup else reader_text(raw)

    def shown_so_far(self, raw: str) -> str:
        """What a stream may show of a partial reply: never half a box."""
        return raw if self.keep_markup else reader_text(settled(raw))

    def boxes(self, raw: str) -> list[dict]:
        return [box.as_dict() for box in locate(raw, self.frame)]


def _chunk(request_id: str, model: str, delta: dict, finish: str | None = None, **extra) -> str:
    chunk = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


async def _events(
    request_id: str, model: str, result_future, pieces: asyncio.Queue, answer: _Answer
) -> AsyncIterator[str]:
    """Server-sent events: the role, text pieces as generated, the rest of the text, the finish with
    the boxes. Pieces are what the reader's text gained, so they add up to the whole reply's text."""
    yield _chunk(request_id, model, {"role": "assistant", "content": ""}, clinical_notice=CLINICAL_NOTICE)
    raw, sent = "", ""
    while not (result_future.done() and pieces.empty()):
        getter = asyncio.ensure_future(pieces.get())
        done, _ = await asyncio.wait({getter, result_future}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            raw += getter.result()
            shown = answer.shown_so_far(raw)
            if shown.startswith(sent) and len(shown) > len(sent):
                yield _chunk(request_id, model, {"content": shown[len(sent) :]})
                sent = shown
        else:
            getter.cancel()
    try:
        result = result_future.result()
    except Exception:
        log.exception("%s failed while streaming", request_id)
        yield _chunk(request_id, model, {}, "error")
        yield "data: [DONE]\n\n"
        return
    text = answer.text(result.text)
    if text.startswith(sent) and len(text) > len(sent):
        yield _chunk(request_id, model, {"content": text[len(sent) :]})
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    yield _chunk(request_id, model, {}, result.finish_reason, usage=usage, boxes=answer.boxes(result.text))
    yield "data: [DONE]\n\n"
