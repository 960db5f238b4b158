"""The vLLM backend of the generation engine, for GPU throughput (``--backend vllm``).

vLLM batches continuously and pages its KV cache, so on a GPU it generates several times faster than
``transformers.generate``. Prompts are rendered with the model's own chat template and images go
through ctscribe's image path first, exactly as in :class:`~ctscribe.generate.engine.TransformersEngine`,
so both backends see the same tokens and pixels. vLLM is not a ctscribe dependency (it needs a CUDA
GPU); docs/PREDICT.md lists what has been checked with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ctscribe.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ImageOptions
from ctscribe.generate.engine import (
    GenerationRequest,
    GenerationResult,
    ImagePath,
    engine_name,
    resolve_adapter,
)


class VLLMEngine(ImagePath):
    """Qwen2-VL (optionally with a LoRA adapter on the language model) on vLLM's offline ``LLM``."""

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_images: int = 1,
        name: str | None = None,
    ) -> None:
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise RuntimeError(
                "--backend vllm needs vLLM on a CUDA machine: pip install vllm, or use --backend transformers"
            ) from exc
        from transformers import AutoProcessor

        adapter_dir = resolve_adapter(adapter) if adapter is not None else None
        rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"] if adapter_dir else None
        self.processor = AutoProcessor.from_pretrained(str(model))
        self.llm = LLM(
            model=str(model),
            enable_lora=adapter_dir is not None,
            max_lora_rank=max(16, rank or 0),
            limit_mm_per_prompt={"image": max_images},
            mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
        )
        self.lora = LoRARequest("adapter", 1, str(adapter_dir)) if adapter_dir else None
        self.image_options = ImageOptions(max_pixels=max_pixels, min_pixels=min_pixels)
        self.name = name or engine_name(model, adapter_dir)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from vllm import SamplingParams

        start = time.perf_counter()
        prompts = [
            {
                "prompt": self.processor.apply_chat_template(r.messages, add_generation_prompt=True),
                "multi_modal_data": {"image": list(r.images)} if r.images else {},
            }
            for r in requests
        ]
        params = [
            SamplingParams(max_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed)
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        seconds = time.perf_counter() - start
        return [
            GenerationResult(
                text=output.outputs[0].text.strip(),
                prompt_tokens=len(output.prompt_token_ids),
                completion_tokens=len(output.outputs[0].token_ids),
                finish_reason="length" if output.outputs[0].finish_reason == "length" else "stop",
                seconds=seconds,
            )
            for output in outputs
        ]
