"""VLLMEngine's options that do not need vLLM (tests/serve/test_vllm.py runs the engine itself)."""

import pytest

from ctscribe.generate.vllm_engine import vllm_dtype


def test_auto_dtype_is_float32_without_a_bf16_gpu_as_in_the_transformers_engine():
    assert vllm_dtype("auto", cuda_bf16=False) == "float32"  # vLLM's own auto takes bf16 on a CPU
    assert vllm_dtype("auto", cuda_bf16=True) == "bfloat16"
    assert vllm_dtype("fp16", cuda_bf16=True) == "float16"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        vllm_dtype("float8", cuda_bf16=False)
