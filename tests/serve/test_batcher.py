"""The batcher's queueing logic, with a recording engine (the HTTP tests use the real model)."""

import threading
import time

import pytest

from ctscribe.generate.engine import GenerationRequest, GenerationResult
from ctscribe.serve.batcher import Batcher, QueueFullError


class RecordingEngine:
    """Answers each request with its prompt, slowly, and records the batches it was given."""

    name = "recording"

    def __init__(self, seconds: float = 0.05, fail_on: str | None = None):
        self.seconds, self.fail_on, self.batches = seconds, fail_on, []
        self.release = threading.Event()
        self.release.set()

    def generate(self, requests):
        self.release.wait()
        self.batches.append(len(requests))
        time.sleep(self.seconds)
        texts = [r.messages[0]["content"] for r in requests]
        if self.fail_on in texts:
            raise RuntimeError("boom")
        return [GenerationResult(t, 1, 1, "stop", self.seconds) for t in texts]


def _request(text: str) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}])


def test_waiting_requests_are_batched_and_each_gets_its_own_answer():
    engine = RecordingEngine()
    engine.release.clear()  # hold the worker so that requests pile up
    batcher = Batcher(engine, max_batch=4, max_queue=32)
    futures = [batcher.submit(_request(str(i))) for i in range(10)]
    engine.release.set()
    assert [f.result(timeout=10).text for f in futures] == [str(i) for i in range(10)]
    assert max(engine.batches) == 4 and sum(engine.batches) == 10
    assert batcher.stats()["pending"] == 0 and sum(batcher.stats()["batches"].values()) == len(engine.batches)
    batcher.close()


def test_a_full_queue_refuses_at_once_and_recovers():
    engine = RecordingEngine()
    engine.release.clear()
    batcher = Batcher(engine, max_batch=1, max_queue=2)
    held = [batcher.submit(_request("a")), batcher.submit(_request("b"))]
    with pytest.raises(QueueFullError, match="busy"):
        batcher.submit(_request("c"))
    engine.release.set()
    assert [f.result(timeout=10).text for f in held] == ["a", "b"]
    assert batcher.submit(_request("d")).result(timeout=10).text == "d"
    batcher.close()


def test_a_failed_batch_reaches_its_callers_and_the_worker_goes_on():
    engine = RecordingEngine(fail_on="bad")
    batcher = Batcher(engine, max_batch=8, max_queue=64)
    failed = batcher.submit(_request("bad"))
    with pytest.raises(RuntimeError, match="boom"):
        failed.result(timeout=10)
    assert batcher.submit(_request("ok")).result(timeout=10).text == "ok"
    batcher.close()


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(RecordingEngine(), max_batch=0, max_queue=1)
