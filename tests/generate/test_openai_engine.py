"""The OpenAI client backend's failures: one sentence each, for predict, evaluate and serve --upstream."""

import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ctscribe.conversation.boxes import GridBox, format_box
from ctscribe.conversation.records import user_message
from ctscribe.generate.engine import GenerationRequest, GenerationResult
from ctscribe.generate.openai_engine import OpenAIEngine, ServerError, choose_model

SUBPROCESS_TIMEOUT_S = 120
GROUNDED = f"The {format_box(GridBox(120, 340, 560, 780), 'region of interest')} is dense."


def test_the_model_is_the_one_asked_for_or_the_only_one_listed():
    assert choose_model(["base", "ct"], "ct", "U") == "ct"
    assert choose_model(["only"], None, "U") == "only"
    with pytest.raises(ServerError, match="serves base, ct: choose one with --model"):
        choose_model(["base", "ct"], None, "U")  # vLLM with LoRA lists the untuned base first
    with pytest.raises(ServerError, match="does not serve 'cx'; it lists: base, ct"):
        choose_model(["base", "ct"], "cx", "U")


def test_a_bad_key_and_an_unknown_model_are_one_sentence(models_server):
    with pytest.raises(ServerError, match=r"refused the API key \(HTTP 401\): Invalid API key"):
        OpenAIEngine(models_server, "ct", api_key="wrong")
    with pytest.raises(ServerError, match="does not serve 'cx'"):
        OpenAIEngine(models_server, "cx", api_key="right")
    assert OpenAIEngine(models_server, "ct", api_key="right").name == "ct"


def _dead_url() -> str:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.mark.parametrize("command", ["predict", "evaluate", "serve"])
def test_predict_evaluate_and_serve_against_a_dead_server_end_in_one_line(command, tmp_path):
    url = _dead_url()
    (tmp_path / "test.json").write_text("[]")
    client = ["--model", "m", "--out", str(tmp_path / "out"), "--backend", "openai", "--base-url", url]
    args = {
        "predict": [str(tmp_path / "x.png"), *client],
        "evaluate": [*client, "--data", str(tmp_path / "test.json")],
        "serve": ["--upstream", url, "--no-web"],  # fails before it would bind its port
    }[command]
    result = subprocess.run(
        [sys.executable, "-m", "ctscribe", command, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: cannot reach the model server at {url}; is it running?" in result.stderr.splitlines()


def test_the_server_is_asked_to_keep_special_tokens_and_only_the_markers_are_kept(chat_server):
    """The stand-in answers as vLLM's server writes with ``skip_special_tokens: false``."""
    url, handler = chat_server
    handler.reply = GROUNDED + "<|im_end|>"
    engine = OpenAIEngine(url, "ct", api_key="right")
    (result,) = engine.generate([GenerationRequest([user_message("Where?", images=0)])])
    assert result.text == GROUNDED
    assert handler.bodies[-1]["skip_special_tokens"] is False
    assert handler.bodies[-1]["spaces_between_special_tokens"] is False
    assert "min_tokens" not in handler.bodies[-1]
    engine.generate(
        [GenerationRequest([user_message("Where?", images=0)], max_new_tokens=9, min_new_tokens=9)]
    )
    assert handler.bodies[-1]["min_tokens"] == 9  # serve --upstream passes min_tokens and ignore_eos on


class _Writes:
    """A batcher whose engine writes a grounded caption, streamed in pieces: ctscribe serve's side."""

    engine = SimpleNamespace(prepare=lambda image: image)

    def stats(self) -> dict:
        return {}

    def submit(self, request: GenerationRequest):
        from concurrent.futures import Future

        for start in range(0, len(GROUNDED), 7):
            if request.on_text is not None:
                request.on_text(GROUNDED[start : start + 7])
        future = Future()
        future.set_result(GenerationResult(GROUNDED, 9, 30, "stop", 0.1))
        return future


def test_ctscribe_serve_takes_the_request_and_returns_the_markers_whole_and_streamed():
    """ctscribe -> ctscribe (predict or serve --upstream against ctscribe serve): the extra fields are
    accepted and the box arrives with its markers, whole and streamed."""
    from ctscribe.serve.api import create_app
    from support.servers import app_in_thread

    pieces = []
    with app_in_thread(create_app(_Writes(), "ct", 2**20)) as url:
        engine = OpenAIEngine(f"{url}/v1", "ct")
        whole, streamed = engine.generate(
            [
                GenerationRequest([user_message("Where?", images=0)]),
                GenerationRequest([user_message("Where?", images=0)], on_text=pieces.append),
            ]
        )
    assert whole.text == streamed.text == "".join(pieces) == GROUNDED
