"""Smoke-check the `2b` fixture on a GPU: build it, load it in bf16, prefill + generate on one image.

Usage: python bench/gpu_smoke_2b.py OUT_JSON [--model DIR]
Prints and writes the build time, load time, prefill and decode timings and peak GPU memory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from ctscribe.fixtures.tiny_model import IMAGE_PAD_ID, build_tiny_model


def main() -> None:
    out_json = Path(sys.argv[1])
    model_dir = Path("/tmp/ctscribe-2b")
    t0 = time.perf_counter()
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, size="2b")
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    load_s = time.perf_counter() - t0
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (512, 512), "gray")], return_tensors="pt").to(
        "cuda"
    )
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model(**inputs)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(**inputs)
        torch.cuda.synchronize()
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        generated = model.generate(**inputs, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        torch.cuda.synchronize()
        generate_s = time.perf_counter() - t0
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_tokens": int((inputs["input_ids"] == IMAGE_PAD_ID).sum()),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "build_s": round(build_s, 1),
        "load_s": round(load_s, 1),
        "prefill_ms": round(prefill_s * 1000, 1),
        "generate_64_tokens_s": round(generate_s, 2),
        "new_tokens": int(generated.shape[1] - inputs["input_ids"].shape[1]),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    print(json.dumps(result, indent=2))
    out_json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
