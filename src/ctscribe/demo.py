"""`ctscribe demo`: the pipeline run offline on the built-in fixtures.

For now it builds the fixtures and shows they work together: the phantom data set loads the way
MedTrinity-25M's shards do, and the random Qwen2-VL turns a phantom CT image plus the original
recipe's prompt into tokens and generates from them. Later steps (prepare, train, export,
evaluate, predict) join here as they land.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctscribe import CLINICAL_NOTICE
from ctscribe.fixtures.phantom import TruthRow, build_phantom, read_truth
from ctscribe.fixtures.tiny_model import IMAGE_PAD_ID, build_tiny_model

# The user prompt of the original LLaMA-Factory recipe.
RECIPE_PROMPT = "Please describe this image in English and provide your diagnostic conclusion."


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


def _phantom_table(truth: list[TruthRow]) -> Table:
    table = Table(title="Phantom data set (MedTrinity-25M schema)")
    table.add_column("rows of this kind")
    table.add_column("count", justify="right")
    for modality, n in sorted(Counter(t.modality for t in truth).items()):
        table.add_row(f"modality {modality}", str(n))
    ct = [t for t in truth if t.modality == "CT" and t.duplicate_of is None]
    for region, n in sorted(Counter(t.region for t in ct).items()):
        table.add_row(f"CT {region}", str(n))
    table.add_row("CT with a lesion", str(sum(t.lesion for t in ct)))
    table.add_row("green ROI box drawn in", str(sum(t.roi_box is not None for t in ct)))
    table.add_row("corrupt image bytes", str(sum(t.corrupt for t in truth)))
    table.add_row("empty caption", str(sum(t.empty_caption for t in truth)))
    table.add_row("re-encoded / resized duplicate", str(sum(t.duplicate_of is not None for t in truth)))
    return table


def run_demo(out: Path, rows: int = 60, seed: int = 0, console: Console | None = None) -> dict:
    """Build the fixtures, load one phantom CT row like a MedTrinity row, and generate from it."""
    import torch
    from datasets import load_dataset
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    console = console or Console()
    out = Path(out)
    console.rule("ctscribe demo (offline, built-in fixtures)")
    model_dir, phantom_dir = ensure_fixtures(out, rows, seed)
    truth = read_truth(phantom_dir)
    console.print(_phantom_table(truth))

    shards = sorted(str(p) for p in (phantom_dir / "25M_demo").glob("*.parquet"))
    dataset = load_dataset("parquet", data_files=shards, split="train")
    pick = next(
        t
        for t in truth
        if t.modality == "CT"
        and t.lesion
        and not t.corrupt
        and t.duplicate_of is None
        and not t.empty_caption
    )
    row = dataset[truth.index(pick)]
    console.print(
        f"[bold]Phantom row[/] {row['id']}: {pick.region} CT, {pick.size} lesion on the image's {pick.side}"
    )
    console.print(f"[bold]Caption[/] {row['caption']}")

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": RECIPE_PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[row["image"].convert("RGB")], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == IMAGE_PAD_ID).sum())
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    text = processor.decode(new_tokens, skip_special_tokens=True)
    console.print(
        f"[bold]Tiny model[/] {model_dir}: prompt of {inputs['input_ids'].shape[1]} tokens, "
        f"{image_tokens} of them image tokens for a {pick.width}x{pick.height} image"
    )
    console.print(
        f"[bold]Generated[/] ({len(new_tokens)} tokens, random weights so no meaning yet): {text!r}"
    )
    console.print(f"[dim]{CLINICAL_NOTICE}[/]", soft_wrap=True)
    return {
        "model": str(model_dir),
        "phantom": str(phantom_dir),
        "rows": len(dataset),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "image_tokens": image_tokens,
        "generated_tokens": len(new_tokens),
        "generated_text": text,
    }
