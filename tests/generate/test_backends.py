"""The backend factory: each ``--backend`` gets the engine it names, at the settings' pixel budget."""

import importlib.util

import pytest

from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.generate.backends import Backend, BackendOptionError, make_backend
from ctscribe.generate.engine import TransformersEngine
from ctscribe.generate.openai_engine import OpenAIEngine, ServerError
from ctscribe.model_settings import ModelSettings

SETTINGS = ModelSettings(max_pixels=LEARNING_PIXELS, min_pixels=28 * 28)


def _budget(engine) -> tuple[int, int]:
    return engine.image_options.max_pixels, engine.image_options.min_pixels


def test_transformers_loads_the_model_at_the_settings_budget(tiny_model_dir):
    engine = make_backend(Backend.transformers, str(tiny_model_dir), None, SETTINGS)
    assert isinstance(engine, TransformersEngine) and engine.name == str(tiny_model_dir)
    assert _budget(engine) == (LEARNING_PIXELS, 28 * 28)


def test_openai_is_a_client_of_the_server_with_the_given_key(models_server):
    engine = make_backend(Backend.openai, "ct", None, SETTINGS, base_url=models_server, api_key="right")
    assert isinstance(engine, OpenAIEngine) and engine.name == "ct"
    assert _budget(engine) == (LEARNING_PIXELS, 28 * 28)
    with pytest.raises(ServerError, match="refused the API key"):
        make_backend(Backend.openai, "ct", None, SETTINGS, base_url=models_server, api_key="wrong")


def test_openai_refuses_options_it_cannot_use(tmp_path):
    with pytest.raises(BackendOptionError, match="needs --base-url") as missing:
        make_backend(Backend.openai, "ct", None, SETTINGS)
    assert missing.value.option == "--base-url"
    with pytest.raises(BackendOptionError, match="the upstream server applies adapters") as adapter:
        make_backend(Backend.openai, "ct", tmp_path, SETTINGS, base_url="http://127.0.0.1:9/v1")
    assert adapter.value.option == "--adapter"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_says_where_to_run(tiny_model_dir):
    with pytest.raises(RuntimeError, match="--backend vllm needs vLLM"):
        make_backend(Backend.vllm, str(tiny_model_dir), None, SETTINGS)
