"""Training throughput: the original recipe against each speed-up alone, then all together.

Every configuration is a real `ctscribe train` run (``ctscribe.train.native.train``: recipe, data
set, LoRA model, CtscribeTrainer) on the same synthetic data: phantom CT slices resized to 512x512
(324 image tokens, the recipe's pixel budget) with MedTrinity-style three-sentence captions. Only the
recipe's speed switches differ:

- original: what LLaMA-Factory runs for train.sh: the vision tower on every image at every step,
  logits over the whole 151,936-word vocabulary at every position, right-padded batches in random
  order, gradient checkpointing on;
- each switch alone: vision-feature cache, LM head at labelled positions only, packing, length-grouped
  batches, Liger kernels (only where installed, on a GPU);
- all together: the default recipe;
- the original and the default recipe without gradient checkpointing (``gradient_checkpointing:
  false``): checkpointing recomputes each layer's forward in the backward pass, about a quarter of a
  LoRA step's work, to save activation memory. The ratio to the same configuration with it is its
  cost in speed (on a CPU too); its peak memory (on a GPU) says whether the default recipe fits a card
  without it.

Measured per configuration, after warm-up steps: samples/s, tokens/s (real tokens, no padding), MFU
and peak memory. MFU = the matrix FLOPs a configuration must do per sample, counted from the model's
shape (forward, plus the backward LoRA needs: activation gradients through the frozen base, 2x the
forward for linear layers and 3x for attention; no gradient-checkpointing recompute, no padding; the
vision tower's forward only where it runs every step), times samples/s, over the device's matrix
rate measured in the same run by timed square matmuls (fp32 on a CPU, bf16 on a GPU). The feature
cache's one-time build is timed on its own and added to the estimate of hours for 3 epochs.

On a CPU the tiny fixture runs (minutes); on a GPU the real Qwen2-VL-2B shape (``--size 2b``, random
weights, bf16), followed by one end-to-end pass: a few training steps with the default recipe, export
(merge) and one request to the OpenAI-compatible server, with its peak memory against the 16 GB card
of the original recipe.

Usage: python bench/train_throughput.py [--size tiny|2b] [--steps 6] [--warmup 2] [--repeats 1]
       [--batch-size 2] [--best-batch 8 16] [--rows 161630] [--json PATH] [--no-e2e] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, TrainerCallback

from ctscribe.fixtures.learning import usable_ct
from ctscribe.fixtures.phantom import generate_rows
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.models import family_for
from ctscribe.prepare.records import sft_record
from ctscribe.recipe import load_recipe
from ctscribe.train.feature_cache import build_feature_cache, cache_wanted
from ctscribe.train.loss import liger_active
from ctscribe.train.model import build_model
from ctscribe.train.native import train, training_image_options
from ctscribe.train.samples import IGNORE_INDEX, SFTDataset, load_records

# Rows of MedTrinity-25M's 25M_demo (docs: facts.md). Its CT share is measured by `ctscribe prepare`
# and not known here, so the default estimate covers every row: an upper bound.
DEMO_ROWS = 161_630
SIDE = 512  # 512 x 512 = the recipe's image_max_pixels: 324 image tokens
SWITCHES = (
    "cache_vision_features",
    "loss_on_labelled_only",
    "packing",
    "group_by_length",
    "use_liger_kernel",
)
ORIGINAL = dict.fromkeys(SWITCHES, "false")
NO_CHECKPOINTING = {"gradient_checkpointing": "false"}
BASELINE = "original (LLaMA-Factory)"


def configurations(with_liger: bool) -> dict[str, dict[str, str]]:
    """Recipe overrides per configuration: the original, each switch alone, all together, and the
    original and all together without gradient checkpointing."""
    alone = {
        "+ feature cache": "cache_vision_features",
        "+ labelled-only LM head": "loss_on_labelled_only",
        "+ packing": "packing",
        "+ length grouping": "group_by_length",
    }
    if with_liger:
        alone["+ liger kernels"] = "use_liger_kernel"
    configs = {BASELINE: ORIGINAL, "original, no checkpointing": {**ORIGINAL, **NO_CHECKPOINTING}}
    configs.update({name: {**ORIGINAL, key: "true"} for name, key in alone.items()})
    configs["all (default recipe)"] = {}
    configs["all, no checkpointing"] = NO_CHECKPOINTING
    return configs


def write_data(folder: Path, rows: int) -> None:
    """``rows`` prepared samples: phantom CT slices at 512x512 with MedTrinity-style captions."""
    (folder / "images").mkdir(parents=True)
    records = []
    for index, (truth, data, caption) in enumerate(generate_rows(rows * 3, seed=11)):
        if not usable_ct(truth):
            continue
        name = f"images/{index:05d}.png"
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB").resize((SIDE, SIDE)).save(folder / name)
        records.append(sft_record(str(index), name, caption, "train"))
        if len(records) == rows:
            break
    (folder / "train.json").write_text(json.dumps(records))


@dataclass(frozen=True)
class SampleShape:
    """Mean tokens of one sample: all, image, and those predicting a label."""

    tokens: float
    image_tokens: float
    labelled: float


def sample_shape(data: Path, model_dir: Path, recipe) -> SampleShape:
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = SFTDataset(
        load_records(data / "train.json"),
        data,
        processor.tokenizer,
        processor.image_processor,
        training_image_options(recipe),
        recipe.cutoff_len,
        family_for(model_dir),
    )
    image, labelled = [], []
    for index in range(len(dataset)):
        sample = dataset[index]  # the tokens as trained
        image.append(int((sample["input_ids"] == dataset.tokens.image_pad).sum()))
        labelled.append(int((sample["labels"] != IGNORE_INDEX).sum()))
    lengths = [int(length) for length in dataset.lengths]
    return SampleShape(statistics.mean(lengths), statistics.mean(image), statistics.mean(labelled))


def flops_per_sample(config, shape: SampleShape, recipe) -> float:
    """Matrix FLOPs one LoRA training sample needs in this configuration (see the module docstring)."""
    text, vision = config.text_config, config.vision_config
    hidden, layers, heads = text.hidden_size, text.num_hidden_layers, text.num_attention_heads
    kv_width = text.num_key_value_heads * hidden // heads
    per_token = 2 * (2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * text.intermediate_size)
    tokens = shape.tokens
    attention = layers * 2 * tokens * tokens * hidden  # QK^T and AV, causal half, forward
    lm = 2 * layers * per_token * tokens + 3 * attention
    # Liger's fused loss still projects every position (in chunks, without keeping the logits).
    labelled_only = recipe.loss_on_labelled_only and not liger_active(recipe)
    head_positions = shape.labelled if labelled_only else tokens
    head = 2 * (2 * hidden * text.vocab_size) * head_positions
    total = lm + head
    if not cache_wanted(recipe):
        width, depth = vision.embed_dim, vision.depth
        patches = 4 * shape.image_tokens  # before the 2x2 merge
        block = 2 * (4 * width * width + 2 * width * width * vision.mlp_ratio)
        merger = 2 * (4 * width * 4 * width + 4 * width * vision.hidden_size) * shape.image_tokens
        embed = 2 * 3 * 2 * 14 * 14 * width * patches
        total += depth * (block * patches + 4 * patches * patches * width) + merger + embed
    return total


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of square matmuls on this device: bf16 8192^2 on a GPU, fp32 1024^2 on a CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step, and peak GPU memory over the run."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 1e9 if self.device.type == "cuda" else None


def bench_recipe(model_dir: Path, data: Path, out: Path, overrides: dict, batch: int, steps: int, device):
    sets = {
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "save_steps": 100000,
        "logging_steps": 100000,
        "report_to": "none",
        "dataloader_num_workers": 0 if device.type == "cpu" else 2,
        "vision_feature_cache_dir": str(out.parent / "feature_cache"),
        **overrides,
    }
    return load_recipe(
        "original",
        [f"{key}={value}" for key, value in sets.items()],
        model_name_or_path=str(model_dir),
        dataset_dir=str(data),
        output_dir=str(out),
    )


def time_cache_build(recipe, data: Path, device) -> float:
    """Seconds to build the feature cache for every image of the data (what training then reuses)."""
    family = family_for(recipe.model_name_or_path)
    model = build_model(recipe, family).to(device)
    processor = AutoProcessor.from_pretrained(recipe.model_name_or_path)
    records = load_records(data / "train.json")
    paths = [data / p for record in records for p in record["images"]]
    sync(device)
    start = time.perf_counter()
    build_feature_cache(
        Path(recipe.vision_feature_cache_dir),
        family,
        family.vision_tower(model),
        processor.image_processor,
        training_image_options(recipe),
        paths,
    )
    sync(device)
    seconds = time.perf_counter() - start
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def end_to_end(model_dir: Path, data: Path, root: Path) -> dict:
    """A few steps of the default recipe at this size, export, and one served request (GPU only)."""
    from fastapi.testclient import TestClient

    from ctscribe.export import export_merged
    from ctscribe.generate.engine import TransformersEngine
    from ctscribe.serve.app import build_server
    from ctscribe.serve.options import ServeOptions

    torch.cuda.reset_peak_memory_stats()
    recipe = load_recipe(
        "original",
        ["max_steps=4", "save_steps=100000", "report_to=none"],
        model_name_or_path=str(model_dir),
        dataset_dir=str(data),
        output_dir=str(root / "e2e"),
    )
    start = time.perf_counter()
    adapter = train(recipe)
    train_peak = torch.cuda.max_memory_allocated() / 1e9
    export_merged(model_dir, adapter, root / "merged", dtype="bf16")
    engine = TransformersEngine(root / "merged", max_pixels=recipe.image_max_pixels)
    image = (data / "images").iterdir().__next__().read_bytes()
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    with TestClient(build_server(engine, ServeOptions(web=False))) as client:
        reply = client.post(
            "/v1/chat/completions",
            json={
                "model": engine.name,
                "max_tokens": 32,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": url}},
                            {"type": "text", "text": "Describe this CT image."},
                        ],
                    }
                ],
            },
        )
    reply.raise_for_status()
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "train_peak_mem_gb": round(train_peak, 2),
        "pipeline_peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "original_card_gb": 16,
        "reply_chars": len(reply.json()["choices"][0]["message"]["content"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", default="2b" if cuda else "tiny", choices=["tiny", "small", "2b"])
    parser.add_argument("--steps", type=int, default=6 if cuda else 2, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2 if cuda else 1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=2, help="the original recipe's micro-batch")
    parser.add_argument("--best-batch", type=int, nargs="*", default=[8, 16] if cuda else [4])
    parser.add_argument("--repeats", type=int, default=1 if cuda else 3, help="rounds; the median counts")
    parser.add_argument("--rows", type=int, default=DEMO_ROWS, help="rows for the 3-epoch estimate")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-e2e", action="store_true", help="skip the GPU end-to-end pass")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"run only these configurations ({BASELINE!r} always runs)"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    out_json = args.json or Path(f"bench/results/train_throughput-{'cpu' if not cuda else device_name}.json")
    out_json = out_json.with_name(out_json.name.replace(" ", "_"))

    rate = matmul_rate(device)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "model", size=args.size)
        data = root / "data"
        steps = args.warmup + args.steps
        write_data(data, steps * max([args.batch_size, *args.best_batch]))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        probe = bench_recipe(model_dir, data, root / "probe", {}, args.batch_size, steps, device)
        shape = sample_shape(data, model_dir, probe)
        cache_seconds = time_cache_build(probe, data, device)
        images = len(load_records(data / "train.json"))
        runs = [(name, o, args.batch_size) for name, o in configurations(liger_active(probe)).items()]
        runs += [(f"all, batch {b}", {}, b) for b in args.best_batch]
        if args.only:
            unknown = set(args.only) - {name for name, _, _ in runs}
            if unknown:
                parser.error(f"unknown configuration(s) {sorted(unknown)}; known: {[n for n, _, _ in runs]}")
            runs = [run for run in runs if run[0] in {BASELINE, *args.only}]
        # Rounds over all configurations, the median per configuration: on a shared, noisy machine a
        # slow spell then hits every configuration alike instead of whichever ran during it.
        measured: dict[str, list[tuple[float, float | None]]] = {name: [] for name, _, _ in runs}
        failed: dict[str, str] = {}
        for round_ in range(args.repeats):
            for index, (name, overrides, batch) in enumerate(runs):
                if name in failed:
                    continue
                clock = StepClock(device)
                recipe = bench_recipe(
                    model_dir, data, root / f"run-{round_}-{index}", overrides, batch, steps, device
                )
                try:
                    train(recipe, callbacks=(clock,))
                except Exception as error:  # e.g. out of memory at a large batch: reported, the rest run
                    failed[name] = f"{type(error).__name__}: {error}"[:500]
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                seconds = clock.times[-1] - clock.times[args.warmup - 1]
                measured[name].append((args.steps * batch / seconds, clock.peak_gb()))
        for name, overrides, batch in runs:
            if name in failed:
                results[name] = {"batch": batch, "error": failed[name]}
                continue
            recipe = bench_recipe(model_dir, data, root / "probe", overrides, batch, steps, device)
            speeds = [speed for speed, _ in measured[name]]
            samples_per_s = statistics.median(speeds)
            peak = max((p for _, p in measured[name] if p is not None), default=None)
            flops = flops_per_sample(config, shape, recipe)
            hours = 3 * args.rows / samples_per_s
            if cache_wanted(recipe):
                hours += args.rows * cache_seconds / images  # the one-time build
            results[name] = {
                "batch": batch,
                "samples_per_s": round(samples_per_s, 3),
                "samples_per_s_each_round": [round(speed, 3) for speed in speeds],
                "tokens_per_s": round(samples_per_s * shape.tokens, 1),
                "mfu": round(flops * samples_per_s / rate, 4),
                "peak_mem_gb": round(peak, 2) if peak is not None else None,
                "hours_3_epochs": round(hours / 3600, 2),
            }
        cache_folders = len(list((root / "feature_cache").iterdir()))
        e2e = None
        if cuda and not args.no_e2e:
            try:
                e2e = end_to_end(model_dir, data, root)
            except Exception as error:  # reported, not hidden: the throughput numbers still stand
                e2e = {"error": f"{type(error).__name__}: {error}"}

    base = results[BASELINE].get("samples_per_s")
    print(
        f"{device_name}, {args.size} shape; {shape.tokens:.0f} tokens/sample "
        f"({shape.image_tokens:.0f} image, {shape.labelled:.0f} labelled); "
        f"matmul rate {rate / 1e12:.3f} TFLOP/s; cache build {images / cache_seconds:.1f} images/s"
    )
    print(
        f"{'configuration':<26} {'batch':>5} {'samples/s':>10} {'tokens/s':>10} {'MFU':>7} {'peak GB':>8} "
        f"{'vs orig':>8} {'h/3 ep':>8}"
    )
    for name, row in results.items():
        if "error" in row:
            print(f"{name:<26} {row['batch']:>5} failed: {row['error']}")
            continue
        peak = f"{row['peak_mem_gb']:.2f}" if row["peak_mem_gb"] is not None else "-"
        ratio = f"{row['samples_per_s'] / base:.2f}x" if base else "-"
        print(
            f"{name:<26} {row['batch']:>5} {row['samples_per_s']:>10.3f} {row['tokens_per_s']:>10.1f} "
            f"{row['mfu']:>7.2%} {peak:>8} {ratio:>8} {row['hours_3_epochs']:>8.2f}"
        )
    pairs = {BASELINE: "original, no checkpointing", "all (default recipe)": "all, no checkpointing"}
    speedup = {
        name: round(results[off]["samples_per_s"] / results[name]["samples_per_s"], 3)
        for name, off in pairs.items()
        if "samples_per_s" in results.get(name, {}) and "samples_per_s" in results.get(off, {})
    }
    for name, ratio in speedup.items():
        print(f"without gradient checkpointing, {name}: {ratio:.2f}x the samples/s with it")
    if e2e:
        print("end to end (train 4 steps, export, one request):", json.dumps(e2e))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device_name,
        **{name: row for name, row in results.items()},
        "meta": {
            "size": args.size,
            "torch": torch.__version__,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "matmul_tflops": round(rate / 1e12, 4),
            "sample": shape.__dict__,
            "cache_build_images_per_s": round(images / cache_seconds, 2),
            "cache_folders": cache_folders,  # 1: every cached configuration reused the timed build
            "rows_for_estimate": args.rows,
            "no_checkpointing_speedup": speedup,  # samples/s without / with, same configuration
            "end_to_end": e2e,
        },
    }
    out_json.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
