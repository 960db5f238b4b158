"""The vLLM backend of the generation engine, for GPU throughput (``--backend vllm``).

vLLM batches continuously and pages its KV cache, so on a GPU it generates several times faster than
``transformers.generate``. Prompts are rendered with the model's own chat template and images go
through ctscribe's image path first, exactly as in :class:`~ctscribe.generate.engine.TransformersEngine`,
so both backends see the same tokens and pixels. The pixel budget is applied there, by ctscribe:
:func:`~ctscribe.ct.images.fit_pixel_budget` gives each image the size the model family's processor
would pick, and vLLM's processor gets the same budget (as ``size``), so it keeps that size rather than
applying a floor of its checkpoint's own (a family's processor config may set one above small budgets).

vLLM is not a ctscribe dependency: it pins an older transformers than ctscribe's lock, so it lives in
its own environment, ``.venv-vllm`` (``make vllm-env``, docs/SERVE.md), where ctscribe is installed too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ctscribe.ct.images import ImageOptions
from ctscribe.generate.decoding import decode_keeping_grounding, hidden_special_ids
from ctscribe.generate.engine import (
    GenerationRequest,
    GenerationResult,
    ImagePathMixin,
    engine_name,
)
from ctscribe.generate.family_boxes import to_family, to_grid
from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, processor_budget, resolve_adapter
from ctscribe.models import family_for

# Room for the ~324 image tokens of DEFAULT_MAX_PIXELS, the prompt and the longest description (2,048 tokens,
# serve's limit), with margin. vLLM's default is the checkpoint's 32,768, whose KV cache a small GPU (or
# VLLM_CPU_KVCACHE_SPACE on a CPU) may not hold.
DEFAULT_MAX_MODEL_LEN = 4096
# ctscribe's dtype names (as TransformersEngine takes them) in vLLM's words.
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def vllm_dtype(dtype: str, cuda_bf16: bool) -> str:
    """vLLM's dtype for ctscribe's ``dtype``: ``auto`` is bf16 on a GPU that has it and fp32 otherwise,
    as in TransformersEngine. vLLM's own ``auto`` would take bf16 on a CPU too, where its greedy texts
    then differ from transformers' fp32 ones (1-2 of 6 equal, measured on the small fixture)."""
    if dtype == "auto":
        return "bfloat16" if cuda_bf16 else "float32"
    if dtype not in VLLM_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(VLLM_DTYPES)}")
    return VLLM_DTYPES[dtype]


def sampling_options(request: GenerationRequest) -> dict:
    """vLLM's ``SamplingParams`` for ``request``. ctscribe decodes the token ids itself, keeping the
    grounding markers that vLLM's text would drop (ctscribe.generate.decoding), so vLLM need not
    detokenize at all."""
    return {
        "max_tokens": request.max_new_tokens,
        "min_tokens": request.min_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "detokenize": False,
    }


class VLLMEngine(ImagePathMixin):
    """A vision-language model of a supported family (optionally with a LoRA adapter on the language
    model) on vLLM's offline ``LLM``."""

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        *,
        dtype: str = "auto",
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_images: int = 1,
        name: str | None = None,
    ) -> None:
        try:
            import torch
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise RuntimeError(
                "--backend vllm needs vLLM: run ctscribe from .venv-vllm (make vllm-env, docs/SERVE.md), "
                "or use --backend transformers"
            ) from exc
        from transformers import AutoProcessor

        family = family_for(model)  # an unsupported checkpoint is refused before anything loads
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        adapter_dir = resolve_adapter(adapter) if adapter is not None else None
        rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"] if adapter_dir else None
        self.processor = AutoProcessor.from_pretrained(str(model))
        self.tokenizer = self.processor.tokenizer
        self.hidden_ids = hidden_special_ids(self.tokenizer)
        self.llm = LLM(
            model=str(model),
            dtype=vllm_dtype(dtype, cuda_bf16),
            max_model_len=max_model_len,
            enable_lora=adapter_dir is not None,
            max_lora_rank=max(16, rank or 0),
            limit_mm_per_prompt={"image": max_images},
            # The budget for vLLM's processor too: images arrive at the budget's size, and a processor
            # config's own floor (65,536 pixels in one family's) would otherwise enlarge smaller ones.
            mm_processor_kwargs={"size": processor_budget(max_pixels, min_pixels)["size"]},
        )
        self.lora = LoRARequest("adapter", 1, str(adapter_dir)) if adapter_dir else None
        self.image_options = ImageOptions(max_pixels=max_pixels, min_pixels=min_pixels)
        self.grid, self.grounding = family.grid, family.grounding
        self.name = name or engine_name(model, adapter_dir)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from vllm import SamplingParams

        start = time.perf_counter()
        asked, requests = requests, to_family(requests, self.grounding)
        prompts = [
            {
                "prompt": self.processor.apply_chat_template(r.messages, add_generation_prompt=True),
                "multi_modal_data": {"image": list(r.images)} if r.images else {},
            }
            for r in requests
        ]
        params = [SamplingParams(**sampling_options(r)) for r in requests]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        seconds = time.perf_counter() - start
        results = [
            GenerationResult(
                text=decode_keeping_grounding(self.tokenizer, output.outputs[0].token_ids, self.hidden_ids),
                prompt_tokens=len(output.prompt_token_ids),
                completion_tokens=len(output.outputs[0].token_ids),
                finish_reason="length" if output.outputs[0].finish_reason == "length" else "stop",
                seconds=seconds,
            )
            for output in outputs
        ]
        return to_grid(results, asked, self.grounding)
