"""The OpenAI-compatible HTTP API: ``/v1/chat/completions``, ``/v1/models`` and ``/health``.

Any OpenAI client works against it: messages with text and ``image_url`` parts (base64 ``data:``
URLs; the server never fetches a URL), ``stream`` with server-sent events (``stream_options.
include_usage`` adds the usage chunk), ``max_tokens`` and ``temperature``, and vLLM's ``min_tokens``,
``ignore_eos`` and ``skip_special_tokens``. It serves one model; the request's ``model`` field is not
checked, so clients written for another name work unchanged.

The routes only route: requests are declared in :mod:`ctscribe.generate.openai_protocol` (a
validation error is a 400 naming the field), the work is :class:`~ctscribe.serve.chat.ChatService`'s,
and each kind of failure maps to one HTTP status here. What ctscribe adds, in places of their own
that OpenAI clients ignore: the ``X-Clinical-Notice`` header and ``clinical_notice`` field (the
output assists, it does not diagnose), and ``boxes`` (:mod:`ctscribe.serve.chat`).
"""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from ctscribe import CLINICAL_NOTICE
from ctscribe.generate.openai_engine import ServerError
from ctscribe.generate.openai_protocol import ChatRequest, ChatResponse, ErrorBody, ErrorDetail, request_error
from ctscribe.serve.batcher import Batcher, QueueFullError
from ctscribe.serve.chat import ChatService, RequestError
from ctscribe.serve.forwarder import Forwarder

log = logging.getLogger(__name__)

NOTICE_HEADER = "X-Clinical-Notice"
RETRY_AFTER_S = 2


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=kind, code=status)).model_dump()
    return JSONResponse(body, status_code=status, headers={NOTICE_HEADER: CLINICAL_NOTICE, **(headers or {})})


def create_app(
    batcher: Batcher | Forwarder, model_name: str, max_image_bytes: int, *, api_key: str | None = None
) -> FastAPI:
    """The API app around a running :class:`Batcher` (or a :class:`Forwarder` to an upstream server);
    the web page mounts onto it (serve.app)."""
    app = FastAPI(
        title="ctscribe", description=CLINICAL_NOTICE, docs_url="/v1/docs", openapi_url="/v1/openapi.json"
    )
    chat = ChatService(batcher, model_name, max_image_bytes)

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

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, request_error(error.errors()), "invalid_request_error")

    @app.exception_handler(RequestError)
    async def refused(_: Request, error: RequestError) -> JSONResponse:
        return _error(400, str(error), "invalid_request_error")

    @app.exception_handler(QueueFullError)
    async def busy(_: Request, error: QueueFullError) -> JSONResponse:
        return _error(503, str(error), "server_busy", {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(ServerError)
    async def upstream_failed(_: Request, error: ServerError) -> JSONResponse:
        """serve --upstream: the upstream's own reason, in one sentence."""
        return _error(502, str(error), "upstream_error")

    @app.exception_handler(Exception)
    async def failed(_: Request, __: Exception) -> JSONResponse:
        return _error(500, "generation failed; the server log has the details", "server_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **chat.stats()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "ctscribe"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        answer = await chat.complete(request)
        if isinstance(answer, ChatResponse):
            return answer
        return StreamingResponse(
            answer, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app
