"""`ctscribe demo`: the pipeline run offline on the built-in fixtures.

It builds the fixtures, prepares the phantom set the way MedTrinity-25M is prepared (CT filter,
clean captions, the one image path, de-duplication, splits) and has the random Qwen2-VL generate
for a prepared test record. Later steps (train, export, evaluate, predict) join as they land.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctscribe import CLINICAL_NOTICE
from ctscribe.data.prepare import FinalizeOptions, StageOptions, run_prepare
from ctscribe.fixtures.phantom import TruthRow, build_phantom, read_truth
from ctscribe.fixtures.tiny_model import IMAGE_PAD_ID, build_tiny_model


def ensure_fixtures(out: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """Build the tiny model and the phantom set under ``out`` unless a complete copy is there.

    Both builders write atomically, so a present ``config.json`` / ``truth.jsonl`` means complete.
    """
    model_dir, phantom_dir = out / "tiny-model", out / "phantom"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, size="tiny", seed=seed)
    if not (phantom_dir / "truth.jsonl").is_file():
        build_phantom(phantom_dir, rows=rows, seed=seed)
    return model_dir, phantom_dir


def _counts_table(title: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title)
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, n in rows:
        table.add_row(label, str(n))
    return table


def _phantom_rows(truth: list[TruthRow]) -> list[tuple[str, int]]:
    ct = [t for t in truth if t.modality == "CT" and t.duplicate_of is None]
    return [
        *((f"modality {m}", n) for m, n in sorted(Counter(t.modality for t in truth).items())),
        *((f"CT {r}", n) for r, n in sorted(Counter(t.region for t in ct).items())),
        ("CT with a lesion", sum(t.lesion for t in ct)),
        ("green ROI box drawn in", sum(t.roi_box is not None for t in ct)),
        ("corrupt image bytes", sum(t.corrupt for t in truth)),
        ("empty caption", sum(t.empty_caption for t in truth)),
        ("re-encoded / resized duplicate", sum(t.duplicate_of is not None for t in truth)),
    ]


def _prepare_rows(stats: dict) -> list[tuple[str, int]]:
    return [
        ("read", stats["read"]),
        ("kept", stats["kept"]),
        *((f"skipped: {reason.replace('_', ' ')}", n) for reason, n in stats["skipped"].items()),
        *((f"split {split}", n) for split, n in stats["splits"].items()),
        ("green ROI box found and removed", stats["roi_box_found"]),
    ]


def run_demo(out: Path, rows: int = 60, seed: int = 0, console: Console | None = None) -> dict:
    """Build the fixtures, prepare the phantom set, and generate for one prepared test record."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    console = console or Console()
    out = Path(out)
    console.rule("ctscribe demo (offline, built-in fixtures)")
    model_dir, phantom_dir = ensure_fixtures(out, rows, seed)
    console.print(
        _counts_table("1. Phantom data set (MedTrinity-25M schema)", _phantom_rows(read_truth(phantom_dir)))
    )

    data_dir = out / "data"
    # Generous val/test shares: a 60-row demo set should still show all three splits.
    options = FinalizeOptions(val_fraction=0.15, test_fraction=0.15)
    stats = run_prepare(str(phantom_dir), data_dir, StageOptions(), options, show_progress=False)
    console.print(_counts_table(f"2. ctscribe prepare -> {data_dir}", _prepare_rows(stats)))

    record = json.loads((data_dir / "test.json").read_text())[0]
    prompt_text = record["messages"][0]["content"].removeprefix("<image>")
    console.print(f"[bold]Test record[/] {record['id']}")
    console.print(f"[bold]Prompt[/] {prompt_text}")
    console.print(f"[bold]Reference[/] {record['messages'][1]['content']}")

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    with Image.open(data_dir / record["images"][0]) as image:
        inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == IMAGE_PAD_ID).sum())
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    text = processor.decode(new_tokens, skip_special_tokens=True)
    console.print(
        f"[bold]3. Tiny model[/] {model_dir}: prompt of {inputs['input_ids'].shape[1]} tokens, "
        f"{image_tokens} of them image tokens"
    )
    console.print(
        f"[bold]Generated[/] ({len(new_tokens)} tokens, random weights so no meaning yet): {text!r}"
    )
    console.print(f"[dim]{CLINICAL_NOTICE}[/]", soft_wrap=True)
    return {
        "model": str(model_dir),
        "data": str(data_dir),
        "kept": stats["kept"],
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "image_tokens": image_tokens,
        "generated_tokens": len(new_tokens),
        "generated_text": text,
    }
