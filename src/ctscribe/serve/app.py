"""``ctscribe serve``: one process with the engine, the batcher, the API and the web page.

    browser ──▶ /  (Gradio page) ──HTTP──▶ /v1/chat/completions ──▶ Batcher ──▶ backend
    OpenAI client ──────────────────────────▲

The page is itself a client of the API (over loopback HTTP), through the same client as
``--backend openai`` (:class:`~ctscribe.generate.openai_engine.OpenAIEngine`). With ``--upstream``
the engine is an OpenAI-compatible server such as vLLM: a :class:`Forwarder` takes the batcher's
place, and the key check, input validation, image preparation and clinical notice stay here, in front of it.
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
from ctscribe.serve.options import ServeOptions

log = logging.getLogger(__name__)


def build_server(
    engine: GenerationBackend,
    options: ServeOptions,
    *,
    api_key: str | None = None,
    forward: bool = False,
    prompts: Mapping[str, str] = DEFAULT_PROMPTS,
    language: str = "en",
) -> FastAPI:
    """The whole app: API routes first, then the page mounted at ``/``.

    ``forward``: ``engine`` is an upstream server's client (OpenAIEngine), which batches on its own.
    ``prompts`` and ``language`` are the model's own (ctscribe.model_settings): what the page asks for
    a description.
    """
    if forward:
        batcher = Forwarder(engine, options.max_queue)
    else:
        batcher = Batcher(engine, options.max_batch, options.max_queue)
    app = create_app(
        batcher, model_name=engine.name, api_key=api_key, max_image_bytes=options.max_image_bytes
    )
    app.state.batcher = batcher
    if options.web:
        import gradio as gr

        from ctscribe.serve.web import build_page, password_check

        page = build_page(
            f"http://{options.page_host}:{options.port}/v1",
            api_key=api_key,
            model=engine.name,
            grid=engine.grid,
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


def serve(engine: GenerationBackend, options: ServeOptions, **settings) -> None:
    """Run the server until interrupted; ``settings`` are :func:`build_server`'s."""
    import uvicorn

    if options.host not in ("127.0.0.1", "localhost", "::1") and not settings.get("api_key"):
        log.warning(
            "serving on %s without --api-key: anyone who can reach this port can use the model", options.host
        )
    app = build_server(engine, options, **settings)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info")
