"""Forwarding to an upstream server (``ctscribe serve --upstream``): the batcher's place, without batching.

An upstream such as vLLM batches continuously on its own, so holding requests back to gather a
static batch here would only add waiting: each request goes to the upstream at once, on a thread of
its own, through :class:`~ctscribe.generate.openai_engine.OpenAIEngine` (images already prepared at
this server's pixel budget; streaming relayed piece by piece). The bound on requests in flight and
the 503 when it is reached are the batcher's, so clients see one behaviour either way.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from ctscribe.generate.engine import GenerationRequest, GenerationResult
from ctscribe.generate.openai_engine import OpenAIEngine
from ctscribe.serve.batcher import QueueFullError


class Forwarder:
    """Sends each request to ``engine``'s server at once; ``submit`` from any thread."""

    def __init__(self, engine: OpenAIEngine, max_queue: int):
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.engine, self.max_queue = engine, max_queue
        self._pool = ThreadPoolExecutor(max_workers=max_queue, thread_name_prefix="ctscribe-forward")
        self._lock = threading.Lock()
        self._pending = 0

    def stats(self) -> dict:
        """Requests in flight, and where they go."""
        return {"pending": self._pending, "upstream": self.engine.base_url}

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Forward a request; its future resolves to the result. Raises :class:`QueueFullError`."""
        with self._lock:
            if self._pending >= self.max_queue:
                busy = f"the server is busy ({self._pending} requests in flight); retry shortly"
                raise QueueFullError(busy)
            self._pending += 1
        future = self._pool.submit(self.engine.generate_one, request)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
