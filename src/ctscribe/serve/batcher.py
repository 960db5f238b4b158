"""Dynamic batching: requests from many users become batches for one generation engine.

One worker thread owns the engine. Each request waits in a bounded queue; the worker takes the
first waiting request, gathers whatever else arrives within ``max_wait_s`` (up to ``max_batch``),
and generates them together. While a batch runs, new requests queue up, so under load the next
batch is full without waiting at all; with one user, a request waits at most ``max_wait_s``.

A full queue refuses at once (:class:`QueueFullError`, HTTP 503 with a retry hint) instead of
letting latency and memory grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future

from ctscribe.generate.engine import GenerationBackend, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The server holds ``max_queue`` requests already; the client should retry later."""


class Batcher:
    """Queue in front of a :class:`~ctscribe.generate.engine.GenerationBackend`; ``submit`` from any
    thread."""

    def __init__(self, engine: GenerationBackend, max_batch: int, max_queue: int, max_wait_s: float = 0.01):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.engine, self.max_batch, self.max_queue, self.max_wait_s = (
            engine,
            max_batch,
            max_queue,
            max_wait_s,
        )
        self._queue: queue.Queue[tuple[GenerationRequest, Future] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # queued plus generating
        self.batch_sizes: Counter[int] = Counter()
        self._worker = threading.Thread(target=self._loop, name="ctscribe-batcher", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        return self._pending

    def stats(self) -> dict:
        """Requests waiting or running, and how many batches of each size ran."""
        sizes = dict(sorted(self.batch_sizes.items()))
        return {"pending": self._pending, "max_batch": self.max_batch, "batches": sizes}

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Queue a request; its future resolves to the result. Raises :class:`QueueFullError`."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFullError(f"the server is busy ({self._pending} requests queued); retry shortly")
            self._pending += 1
        future: Future[GenerationResult] = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        """Stop the worker after the batches already queued."""
        self._queue.put(None)
        self._worker.join(timeout=60)

    def _gather(self, first: tuple[GenerationRequest, Future]) -> tuple[list, bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stop = self._gather(first)
            live = [(request, future) for request, future in batch if future.set_running_or_notify_cancel()]
            try:
                if live:
                    results = self.engine.generate([request for request, _ in live])
                    self.batch_sizes[len(live)] += 1
                    for (_, future), result in zip(live, results, strict=True):
                        future.set_result(result)
            except Exception as error:  # one failed batch must not kill the server: its callers see why
                log.exception("generation failed for a batch of %d", len(live))
                for _, future in live:
                    future.set_exception(error)
            finally:
                with self._lock:
                    self._pending -= len(batch)
            if stop:
                break
