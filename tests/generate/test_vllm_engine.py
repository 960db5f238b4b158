"""VLLMEngine's options that do not need vLLM (tests/serve/test_vllm.py runs the engine itself)."""

import pytest

from ctscribe.generate.vllm_engine import vllm_dtype
from ctscribe.models import DEFAULT_FAMILY


def test_auto_dtype_is_float32_without_a_bf16_gpu_as_in_the_transformers_engine():
    assert vllm_dtype("auto", cuda_bf16=False) == "float32"  # vLLM's own auto takes bf16 on a CPU
    assert vllm_dtype("auto", cuda_bf16=True) == "bfloat16"
    assert vllm_dtype("fp16", cuda_bf16=True) == "float16"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        vllm_dtype("float8", cuda_bf16=False)


def test_the_text_is_ctscribes_decoding_of_vllms_ids_with_the_markers_kept(tiny_model_dir, monkeypatch):
    """vLLM is replaced by a stand-in that returns the ids of a grounded caption and its end of turn;
    the engine's text must keep the box and drop the end of turn, as TransformersEngine does."""
    import sys
    from types import ModuleType, SimpleNamespace

    from transformers import AutoProcessor

    from ctscribe.conversation.boxes import GridBox, format_box
    from ctscribe.conversation.records import user_message
    from ctscribe.generate.decoding import hidden_special_ids
    from ctscribe.generate.engine import GenerationRequest
    from ctscribe.generate.vllm_engine import VLLMEngine, sampling_options

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    grounded = f"The {format_box(GridBox(1, 2, 300, 400), 'region of interest')} is dense."
    tokenizer = processor.tokenizer
    ids = tokenizer(grounded)["input_ids"] + tokenizer.convert_tokens_to_ids(["<|im_end|>"])
    asked = []

    class LLM:
        def generate(self, prompts, params, **_):
            asked.extend(params)
            done = SimpleNamespace(text="vLLM's own text is not used", token_ids=ids, finish_reason="stop")
            return [SimpleNamespace(prompt_token_ids=[0] * 9, outputs=[done]) for _ in prompts]

    fake = ModuleType("vllm")
    fake.SamplingParams = dict
    monkeypatch.setitem(sys.modules, "vllm", fake)
    engine = VLLMEngine.__new__(VLLMEngine)  # everything __init__ would build, without vLLM
    engine.processor, engine.tokenizer, engine.llm, engine.lora = processor, tokenizer, LLM(), None
    engine.hidden_ids = hidden_special_ids(tokenizer)
    engine.grounding = DEFAULT_FAMILY.grounding
    request = GenerationRequest([user_message("Where?", images=0)], max_new_tokens=7)
    (result,) = engine.generate([request])
    assert result.text == grounded and result.completion_tokens == len(ids)
    assert asked == [sampling_options(request)] and asked[0]["max_tokens"] == 7
    assert asked[0]["detokenize"] is False  # ctscribe decodes; vLLM's text would have lost the markers
