"""``ctscribe serve``: one process with the engine, the batcher, the API and the web page.

    browser ──▶ /  (Gradio page) ──HTTP──▶ /v1/chat/completions ──▶ Batcher ──▶ backend
    OpenAI client ──────────────────────────▲

The page is itself a client of the OpenAI-compatible API (over loopback HTTP), so it works
unchanged against any server that speaks the same API, such as vLLM serving an exported model.
With ``--upstream`` the engine is such a server: a :class:`Forwarder` takes the batcher's place, and
the key check, input validation, image preparation and clinical notice stay here, in front of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI

from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.generate.engine import GenerationBackend
from ctscribe.serve.api import create_app
from ctscribe.serve.batcher import Batcher
from ctscribe.serve.forwarder import Forwarder

log = logging.getLogger(__name__)


def build_server(
    engine: GenerationBackend,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_image_mb: float = 20,
    web: bool = True,
    forward: bool = False,
    prompts: Mapping[str, str] = DEFAULT_PROMPTS,
    language: str = "en",
) -> FastAPI:
    """The whole app: API routes first, then the page mounted at ``/``.

    ``forward``: ``engine`` is an upstream server's client (OpenAIEngine), which batches on its own.
    ``prompts`` and ``language`` are the model's own (ctscribe.model_settings): what the page asks for
    a description.
    """
    batcher = Forwarder(engine, max_queue) if forward else Batcher(engine, max_batch, max_queue)
    app = create_app(batcher, model_name=engine.name, api_key=api_key, max_image_mb=max_image_mb)
    app.state.batcher = batcher
    if web:
        import gradio as gr

        from ctscribe.serve.web import build_page, password_check

        api_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        page = build_page(
            f"http://{api_host}:{port}/v1",
            api_key=api_key,
            model=engine.name,
            max_pixels=engine.image_options.max_pixels,
            prompts=prompts,
            language=language,
        )
        app = gr.mount_gradio_app(
            app,
            page,
            path="/",
            auth=password_check(api_key),
            auth_message="Enter any user name and the server's API key.",
            run_history=False,  # Gradio would keep uploads and conversations in the browser's storage
        )
    return app


def serve(engine: GenerationBackend, *, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Run the server until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not options.get("api_key"):
        log.warning("serving on %s without --api-key: anyone who can reach this port can use the model", host)
    app = build_server(engine, host=host, port=port, **options)
    uvicorn.run(app, host=host, port=port, log_level="info")
