"""The OpenAI-compatible API over real HTTP on loopback, with the trained tiny model in fp32."""

import base64
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from ctscribe import CLINICAL_NOTICE
from ctscribe.fixtures.dicom_samples import pydicom_ct_slices
from ctscribe.fixtures.learning import LEARNING_PIXELS, clean_ct_rows
from ctscribe.generate.openai_engine import image_data_url

KEY = "test-key-123"
FRONT_KEY = "front-key-456"  # serve --upstream's own key, unlike its upstream's
PROMPT = "Describe this CT image and give your diagnostic impression."


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory, start_server):
    running = start_server(
        trained_run / "model", tmp_path_factory.mktemp("serve") / "server.log", "--api-key", KEY
    )
    try:
        yield running
    finally:
        running.stop()


def _headers(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _phantom_urls(n: int) -> list[str]:
    rows = clean_ct_rows(3 * n, seed=21)[:n]
    return [image_data_url(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in rows]


def _chat(url: str, image_url: str | None, **extra) -> dict:
    content = [{"type": "text", "text": PROMPT}]
    if image_url:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {
        "model": "anything",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        **extra,
    }


def _ct_slice_url() -> str:
    """pydicom's real CT slice, windowed to a PNG as a client would upload it."""
    from ctscribe.ct.dicom import read_dicom
    from ctscribe.ct.windows import apply_window

    (ct,) = read_dicom(pydicom_ct_slices()["CT_small.dcm"])
    grey = apply_window(ct.hu, 400, 50)
    return image_data_url(Image.fromarray(grey).convert("RGB"))


@pytest.mark.slow
def test_a_real_ct_slice_gets_a_description_and_the_notice_travels_apart(server):
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=_chat(server.url, _ct_slice_url()),
        headers=_headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    text = body["choices"][0]["message"]["content"]
    assert text and CLINICAL_NOTICE not in text
    assert body["clinical_notice"] == CLINICAL_NOTICE
    assert response.headers["x-clinical-notice"] == CLINICAL_NOTICE
    assert body["usage"]["completion_tokens"] >= 1 and body["object"] == "chat.completion"


@pytest.mark.slow
def test_any_openai_client_works_and_streaming_adds_up_to_the_same_text(server, trained_run):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == [str(trained_run / "model")]
    (url,) = _phantom_urls(1)
    messages = _chat(server.url, url)["messages"]
    whole = (
        client.chat.completions.create(model="x", messages=messages, max_tokens=16).choices[0].message.content
    )
    assert whole.startswith("CT of the")
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="x", messages=messages, max_tokens=16, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
    assert finish in ("stop", "length")
    # text-only follow-ups work too
    follow = [*messages, {"role": "assistant", "content": whole}, {"role": "user", "content": "Which side?"}]
    assert (
        client.chat.completions.create(model="x", messages=follow, max_tokens=8).choices[0].message.content
        is not None
    )


@pytest.mark.slow
def test_a_missing_or_wrong_key_gets_401_but_health_stays_open(server):
    body = _chat(server.url, None)
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).status_code == 401
    wrong = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=_headers("nope"), timeout=30)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{server.url}/health", timeout=30).json()["status"] == "ok"


def _bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("image_url", "message"),
    [
        ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "unusable image"),
        ("data:image/png;base64,%%%not-base64%%%", "not valid base64"),
        ("https://example.org/ct.png", "data: URL"),
        ("data:image/png;base64," + base64.b64encode(_bomb_png()).decode(), "too large"),
        ("data:image/png;base64," + base64.b64encode(b"\0" * (25 * 2**20)).decode(), "limit"),
    ],
    ids=["not-an-image", "bad-base64", "remote-url", "decompression-bomb", "oversized"],
)
def test_bad_uploads_get_400_with_a_clear_message(server, image_url, message):
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=_chat(server.url, image_url), headers=_headers(), timeout=60
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


@pytest.mark.slow
def test_sixteen_concurrent_clients_get_their_single_request_answers_from_shared_batches(server):
    urls = _phantom_urls(16)

    def ask(url: str) -> str:
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json=_chat(server.url, url, max_tokens=20),
            headers=_headers(),
            timeout=300,
        )
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    alone = [ask(url) for url in urls]
    before = httpx.get(f"{server.url}/health", timeout=30).json()["batches"]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, urls))
    after = httpx.get(f"{server.url}/health", timeout=30).json()["batches"]
    assert together == alone
    grown = {int(size): count - before.get(size, 0) for size, count in after.items()}
    assert any(size > 1 and count > 0 for size, count in grown.items()), after


@pytest.mark.slow
def test_a_full_queue_answers_503_with_a_retry_hint(trained_run, tmp_path, start_server):
    busy = start_server(trained_run / "model", tmp_path / "busy.log", "--max-batch", "1", "--max-queue", "2")
    try:
        (url,) = _phantom_urls(1)

        def ask(_: int) -> httpx.Response:
            return httpx.post(
                f"{busy.url}/v1/chat/completions", json=_chat(busy.url, url, max_tokens=64), timeout=300
            )

        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(ask, range(10)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] and "busy" in refused.json()["error"]["message"]
        assert httpx.get(f"{busy.url}/health", timeout=30).json()["status"] == "ok"  # still standing
    finally:
        busy.stop()
    assert "Traceback" not in (tmp_path / "busy.log").read_text()


@pytest.mark.slow
def test_predict_with_the_openai_backend_is_a_client_of_the_server(server, trained_run, tmp_path):
    from ctscribe.generate.engine import TransformersEngine
    from ctscribe.generate.openai_engine import OpenAIEngine
    from ctscribe.predict import predict

    images = []
    for index, (_, data) in enumerate(clean_ct_rows(12, seed=8)[:3]):
        images.append(tmp_path / f"{index}.png")
        images[-1].write_bytes(data)
    remote = OpenAIEngine(f"{server.url}/v1", api_key=KEY, max_pixels=LEARNING_PIXELS)
    local = TransformersEngine(trained_run / "model", max_pixels=LEARNING_PIXELS)
    for engine, out in ((remote, tmp_path / "remote.jsonl"), (local, tmp_path / "local.jsonl")):
        summary = predict(engine, images, out, max_new_tokens=16, show_progress=False)
        assert summary.written == 3
    remote_texts = [json.loads(line)["text"] for line in (tmp_path / "remote.jsonl").read_text().splitlines()]
    local_texts = [json.loads(line)["text"] for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert remote_texts == local_texts and all(t.startswith("CT of the") for t in remote_texts)
    assert remote.name == str(trained_run / "model")  # the model the server lists


@pytest.fixture(scope="module")
def front(server, trained_run, tmp_path_factory, start_server):
    """``ctscribe serve --upstream`` in front of the module's server, with a key of its own."""
    running = start_server(
        trained_run / "model",  # the upstream's model name: its only one, named explicitly all the same
        tmp_path_factory.mktemp("front") / "front.log",
        "--api-key",
        FRONT_KEY,
        "--upstream",
        f"{server.url}/v1",
        "--upstream-api-key",
        KEY,
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_serve_upstream_answers_with_the_upstreams_text_streamed_or_whole(server, front, trained_run):
    from openai import OpenAI

    (url,) = _phantom_urls(1)
    messages = _chat(server.url, url)["messages"]
    direct = OpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    expected = direct.chat.completions.create(model="x", messages=messages, max_tokens=16)
    client = OpenAI(base_url=f"{front.url}/v1", api_key=FRONT_KEY)
    assert [m.id for m in client.models.list().data] == [str(trained_run / "model")]
    raw = httpx.post(
        f"{front.url}/v1/chat/completions",
        json=_chat(front.url, url),
        headers=_headers(FRONT_KEY),
        timeout=120,
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["choices"][0]["message"]["content"] == expected.choices[0].message.content
    assert raw.json()["clinical_notice"] == CLINICAL_NOTICE == raw.headers["x-clinical-notice"]
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model="x", messages=messages, max_tokens=16, stream=True)
    ]
    assert "".join(pieces) == expected.choices[0].message.content and len([p for p in pieces if p]) > 1


@pytest.mark.slow
def test_serve_upstream_checks_its_own_key_and_the_input_before_forwarding(front):
    body = _chat(front.url, _phantom_urls(1)[0])
    # the upstream's key is not the front's: clients need the front's
    assert (
        httpx.post(
            f"{front.url}/v1/chat/completions", json=body, headers=_headers(KEY), timeout=30
        ).status_code
        == 401
    )
    bad = _chat(front.url, "https://example.org/ct.png")
    refused = httpx.post(
        f"{front.url}/v1/chat/completions", json=bad, headers=_headers(FRONT_KEY), timeout=30
    )
    assert refused.status_code == 400 and "data: URL" in refused.json()["error"]["message"]
    assert httpx.get(f"{front.url}/health", timeout=30).json()["upstream"].endswith("/v1")


@pytest.mark.slow
def test_serve_upstream_refuses_an_adapter_and_an_unknown_model(server, tmp_path):
    for extra, message in (
        (["--model", "m", "--adapter", str(tmp_path)], "the upstream server applies adapters"),
        (["--model", "nope"], "does not serve 'nope'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ctscribe", "serve", "--upstream", f"{server.url}/v1", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CTSCRIBE_UPSTREAM_API_KEY": KEY, "COLUMNS": "200"},
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_serve_needs_a_model_or_an_upstream():
    from typer.testing import CliRunner

    from ctscribe.cli import app

    result = CliRunner().invoke(app, ["serve"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "give the model to serve, or --upstream URL" in result.output


def _spot_scan() -> tuple[str, tuple[int, int, int, int]]:
    """A PNG data URL of a scan with a white spot off-centre in a body off-centre, and the spot."""
    from PIL import ImageDraw

    scan = Image.new("RGB", (420, 300))
    draw = ImageDraw.Draw(scan)
    draw.ellipse((120, 40, 400, 280), fill=(120, 120, 120))
    spot = (230, 100, 259, 129)
    draw.rectangle(spot, fill=(255, 255, 255))
    return image_data_url(scan), spot


def test_boxes_come_as_a_field_whole_and_at_the_end_of_a_stream():
    """In process, with a stand-in engine that answers with a box around the bright spot of the image
    it is given (tests/support/pointing.py; no model writes boxes yet): this tests the API's boxes
    and text, not a model. An OpenAI client reads the reader's text and finds the boxes as an extra."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from ctscribe.serve.app import build_server
    from ctscribe.serve.options import ServeOptions
    from support.pointing import BrightSpotEngine

    app = build_server(BrightSpotEngine(LEARNING_PIXELS), ServeOptions(web=False))
    url, spot = _spot_scan()
    messages = _chat("", url)["messages"]
    try:
        with TestClient(app) as http:
            client = OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http)
            whole = client.chat.completions.create(model="x", messages=messages, max_tokens=64)
            text = whole.choices[0].message.content
            assert text == "CT of the phantom. the bright spot [box 1] is dense."
            (box,) = whole.model_extra["boxes"]
            assert box["phrase"] == "the bright spot"
            assert max(abs(a - b) for a, b in zip(box["box_pixels"], spot, strict=True)) <= 2, box
            assert whole.model_extra["clinical_notice"] == CLINICAL_NOTICE

            chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True))
            pieces = [chunk.choices[0].delta.content or "" for chunk in chunks]
            assert "".join(pieces) == text and len([p for p in pieces if p]) > 3
            assert not any("<|" in piece or "(" in piece for piece in pieces)  # never half a box
            assert chunks[-1].choices[0].finish_reason == "stop"
            assert chunks[-1].model_extra["boxes"] == [box]

            raw = http.post("/v1/chat/completions", json=_chat("", url, skip_special_tokens=False)).json()
            assert "<|box_start|>" in raw["choices"][0]["message"]["content"] and raw["boxes"] == [box]
            bad = http.post("/v1/chat/completions", json=_chat("", url, skip_special_tokens="no"))
            assert bad.status_code == 400 and "skip_special_tokens" in bad.json()["error"]["message"]
            text_only = http.post("/v1/chat/completions", json=_chat("", None)).json()
            assert text_only["boxes"] == []
    finally:
        app.state.batcher.close()


def test_serve_upstream_maps_the_upstreams_box_to_the_clients_pixels():
    """``serve --upstream`` in front of a server that answers with a box (the stand-in of the test
    above, behind ctscribe's own API): the front asks for the markup (skip_special_tokens false),
    sends the image fitted to its budget and maps the box back through its own crop and resize, so
    the field lands on the spot in the client's pixels, as without the upstream."""
    from fastapi.testclient import TestClient

    from ctscribe.generate.openai_engine import OpenAIEngine
    from ctscribe.serve.app import build_server
    from ctscribe.serve.options import ServeOptions
    from support.pointing import BrightSpotEngine
    from support.servers import app_in_thread

    upstream_app = build_server(BrightSpotEngine(LEARNING_PIXELS), ServeOptions(web=False))
    url, spot = _spot_scan()
    try:
        with app_in_thread(upstream_app) as upstream:
            engine = OpenAIEngine(f"{upstream}/v1", max_pixels=LEARNING_PIXELS)
            front = build_server(engine, ServeOptions(web=False), forward=True)
            try:
                with TestClient(front) as http:
                    reply = http.post("/v1/chat/completions", json=_chat("", url, max_tokens=64)).json()
            finally:
                front.state.batcher.close()
    finally:
        upstream_app.state.batcher.close()
    assert reply["choices"][0]["message"]["content"] == "CT of the phantom. the bright spot [box 1] is dense."
    (box,) = reply["boxes"]
    assert box["phrase"] == "the bright spot"
    assert max(abs(a - b) for a, b in zip(box["box_pixels"], spot, strict=True)) <= 2, box
