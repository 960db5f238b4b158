"""The OpenAI client backend's failures: one sentence each, for predict, evaluate and serve --upstream."""

import socket
import subprocess
import sys

import pytest

from ctscribe.generate.openai_engine import OpenAIEngine, ServerError, choose_model

SUBPROCESS_TIMEOUT_S = 120


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
