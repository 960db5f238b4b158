"""The chat protocol in process: validation errors, the usage chunk, vLLM's min_tokens and ignore_eos.

The wire format is read raw (server-sent events as bytes), since what matters is what a client that
parses it itself, such as ``vllm bench serve``, finds there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.serve.app import build_server
from ctscribe.serve.options import ServeOptions
from support.pointing import BrightSpotEngine

ROUTE = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Describe."}]


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    app = build_server(BrightSpotEngine(LEARNING_PIXELS), ServeOptions(web=False))
    try:
        with TestClient(app) as client:
            yield client
    finally:
        app.state.batcher.close()


def _events(response) -> list[dict | str]:
    """The stream's events in order: each chunk as JSON, the end as the string ``[DONE]``."""
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages.0.content.0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content.0.image_url.url: Field required",
        ),
        (
            {"messages": MESSAGES, "max_tokens": 4096},
            "max_tokens: Input should be less than or equal to 2048",
        ),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"messages": MESSAGES, "skip_special_tokens": "no"}, "skip_special_tokens"),
        ({"messages": MESSAGES, "ignore_eos": 1}, "ignore_eos"),
        ({"messages": MESSAGES, "min_tokens": -1}, "min_tokens"),
        ({"messages": MESSAGES, "top_k": 5}, "top_k is not supported"),
        ([MESSAGES], "the request body must be a JSON object"),
    ],
    ids=lambda value: None if isinstance(value, str) else "",
)
def test_a_bad_request_gets_400_naming_the_field(http, body, named):
    response = http.post(ROUTE, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert named in error["message"] and error["type"] == "invalid_request_error" and error["code"] == 400
    assert response.json()["clinical_notice"]


def test_a_body_that_is_not_json_gets_400(http):
    response = http.post(ROUTE, content=b"{not json", headers={"content-type": "application/json"})
    assert (
        response.status_code == 400 and response.json()["error"]["message"] == "the request body must be JSON"
    )


def test_the_usage_comes_in_one_chunk_without_choices_just_before_done_when_asked(http):
    whole = http.post(ROUTE, json={"messages": MESSAGES}).json()
    asked = _events(
        http.post(
            ROUTE, json={"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        )
    )
    *chunks, usage_chunk, done = asked
    assert done == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert all("usage" not in chunk for chunk in chunks)  # not on the finish chunk, nor anywhere else
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["boxes"] == whole["boxes"]
    unasked = _events(http.post(ROUTE, json={"messages": MESSAGES, "stream": True}))
    assert unasked[-1] == "[DONE]" and all("usage" not in chunk for chunk in unasked[:-1])
    assert all(chunk["choices"] for chunk in unasked[:-1])


def test_health_counts_the_tokens_of_every_usage_reported(http):
    before = http.get("/health").json()["tokens"]
    usage = http.post(ROUTE, json={"messages": MESSAGES}).json()["usage"]
    http.post(ROUTE, json={"messages": MESSAGES, "stream": True})  # counted though not shown
    after = http.get("/health").json()["tokens"]
    assert after["prompt"] - before["prompt"] == 2 * usage["prompt_tokens"]
    assert after["completion"] - before["completion"] == 2 * usage["completion_tokens"]


class _Recording(BrightSpotEngine):
    """The stand-in engine, keeping every request it is given."""

    def __init__(self) -> None:
        super().__init__(LEARNING_PIXELS)
        self.requests: list = []

    def generate(self, requests):
        self.requests.extend(requests)
        return super().generate(requests)


def test_min_tokens_and_ignore_eos_reach_the_engine_as_min_new_tokens():
    """vLLM's two fields become the engine's ``min_new_tokens`` (tests/generate/test_engine.py shows
    the model honours it): ignore_eos as all of ``max_tokens``, min_tokens as given."""
    engine = _Recording()
    app = build_server(engine, ServeOptions(web=False))
    try:
        with TestClient(app) as client:
            for extra in ({}, {"min_tokens": 5}, {"ignore_eos": True}, {"min_tokens": 99, "max_tokens": 20}):
                response = client.post(ROUTE, json={"messages": MESSAGES, "max_tokens": 40, **extra})
                assert response.status_code == 200, response.text
    finally:
        app.state.batcher.close()
    asked = [(r.min_new_tokens, r.max_new_tokens) for r in engine.requests]
    assert asked == [(0, 40), (5, 40), (40, 40), (20, 20)]


def test_an_image_url_may_be_the_url_alone(http):
    from PIL import Image

    from ctscribe.generate.openai_engine import image_data_url

    url = image_data_url(Image.new("RGB", (64, 64), (90, 90, 90)))
    for image_url in (url, {"url": url}):
        content = [{"type": "image_url", "image_url": image_url}, {"type": "text", "text": "Describe."}]
        response = http.post(ROUTE, json={"messages": [{"role": "user", "content": content}]})
        assert response.status_code == 200, response.text
        (choice,) = response.json()["choices"]
        assert choice["message"]["content"] == "CT of the phantom. No bright spot is seen."
