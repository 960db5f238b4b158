"""How prepare, finalize and the start of training grow with the number of rows (issue 18).

For each size N, on synthetic data with small (112 x 112) images:

- ``stage`` (sizes up to ``--stage-max``): `prepare`'s per-row stage over an N-row parquet in the
  25M_demo layout whose images and captions come from a pool of phantom CT slices; reported per row.
- ``finalize``: dedupe, split and write N synthesised staging records (MedTrinity-length captions,
  random 1024-bit hashes with 1% planted near-duplicates) that point at a pool of ~1,000 real PNGs.
- ``train start``: `ctscribe train`'s path (tiny-cpu recipe, the tiny model) on the finalized folder,
  from process start to the end of the first optimizer step: cold (the split's sample table is
  measured) and again (``restart``: the table is read). Peak RSS is the process's own maximum at
  that step.

Each measured step runs in its own process, so its peak RSS and start-up are its own. The machine
may be shared: compare sizes within one run (growth), not absolute times between runs.

- ``merge`` (``--merge-size N``): `prepare-merge` of N synthesised staging records dealt to 4 shard
  folders with one image file per row: the hard links and the finalize, timed apart.

Usage: python bench/scale.py --sizes 10000,100000,1000000 --json bench/results/scale-cpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

POOL = 1000  # distinct image files the synthesised records point at
PIXELS = 112 * 112  # the tiny-cpu recipe's budget: 16 image tokens
ROWS_PER_UNIT = 5000  # staging records per unit file (as parquet row groups would give)
NEAR_DUPLICATES = 0.01  # share of synthesised records planted as near copies of an earlier hash


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in kB on Linux


def _pool(work: Path) -> tuple[list[bytes], list[str]]:
    """~POOL phantom CT slices at 112 x 112 (PNG bytes) and their MedTrinity-style captions, cached."""
    cache = work / "pool.json"
    if not cache.exists():
        from PIL import Image

        from ctscribe.fixtures.learning import usable_ct
        from ctscribe.fixtures.phantom import generate_rows

        images, captions = [], []
        for truth, data, caption in generate_rows(int(POOL * 1.6), seed=0):
            if usable_ct(truth) and len(images) < POOL:
                buffer = io.BytesIO()
                Image.open(io.BytesIO(data)).convert("RGB").resize((112, 112)).save(buffer, format="PNG")
                images.append(buffer.getvalue().hex())
                captions.append(caption)
        cache.write_text(json.dumps({"images": images, "captions": captions}))
    pool = json.loads(cache.read_text())
    return [bytes.fromhex(h) for h in pool["images"]], pool["captions"]


def _uuid(rng: random.Random) -> str:
    parts = (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(48))
    return "{:08x}-{:04x}-11ef-{:04x}-{:012x}".format(*parts)


# ---------------------------------------------------------------------------------------------
# Steps, each run in its own process (``--step``)


def step_stage(work: Path, size: int) -> dict:
    """Stage an N-row parquet source (built here, untimed) and time the stage alone."""
    from ctscribe.ct.images import ImageOptions
    from ctscribe.fixtures.phantom import _write_shard
    from ctscribe.prepare.run import StageOptions, stage
    from ctscribe.prepare.sources import ParquetSource

    images, captions = _pool(work)
    source_dir = work / f"source-{size}" / "25M_demo"
    source_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(size)
    shards = -(-size // 10000)
    for shard in range(shards):
        rows = range(shard * 10000, min(size, (shard + 1) * 10000))
        picks = [rng.randrange(len(images)) for _ in rows]
        _write_shard(
            source_dir / f"train-{shard:05d}-of-{shards:05d}.parquet",
            [images[p] for p in picks],
            [_uuid(rng) for _ in rows],
            [captions[p] for p in picks],
            1000,
        )
    out = work / f"staged-{size}"
    shutil.rmtree(out, ignore_errors=True)
    source = ParquetSource(sorted(source_dir.glob("*.parquet")))
    options = StageOptions(image=ImageOptions(max_pixels=PIXELS))
    started = time.perf_counter()
    stage(source.units(), out, options, source=source.description)
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(source_dir.parent, ignore_errors=True)
    return {"stage_s": round(seconds, 2), "stage_rss_gb": round(_peak_rss_gb(), 3)}


def synthesise_staging(work: Path, size: int) -> Path:
    """DIR/.staging as `prepare`'s stage would leave it for N rows, pointing at the pool's files."""
    from ctscribe.ct.images import ImageOptions
    from ctscribe.prepare.dedupe import HASH_BITS
    from ctscribe.prepare.run import STAGING, STAGING_FORMAT, StageOptions

    images, captions = _pool(work)
    out = work / f"data-{size}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "images" / "pool").mkdir(parents=True)
    for k, data in enumerate(images):
        (out / "images" / "pool" / f"{k}.png").write_bytes(data)
    units = out / STAGING / "units"
    units.mkdir(parents=True)
    rng = random.Random(size)
    hashes: list[int] = []
    handle = None
    for row in range(size):
        if row % ROWS_PER_UNIT == 0:
            if handle:
                handle.close()
            handle = (units / f"{row // ROWS_PER_UNIT:08d}.jsonl").open("w", encoding="utf-8")
        pick = rng.randrange(len(images))
        row_id = _uuid(rng)
        if hashes and rng.random() < NEAR_DUPLICATES:  # a near copy (a few bits off) of an earlier row
            value = rng.choice(hashes) ^ (1 << rng.randrange(HASH_BITS)) ^ (1 << rng.randrange(HASH_BITS))
            image = f"images/dup/{row_id}.png"  # finalize deletes a near duplicate's own file
        else:
            value = rng.getrandbits(HASH_BITS)
            image = f"images/pool/{pick}.png"
        if len(hashes) < 100_000:
            hashes.append(value)
        record = {
            "row": row,
            "id": row_id,
            "modality": "CT",
            "status": "ok",
            "caption": captions[pick],
            "image": image,
            "hash": f"{value:0{HASH_BITS // 4}x}",
            "group": None,
            "roi_box_found": False,
            "roi_box": None,
            "image_tokens": 16,
        }
        handle.write(json.dumps(record) + "\n")
    handle.close()
    stage_options = asdict(StageOptions(image=ImageOptions(max_pixels=PIXELS)))
    options = {
        "format": STAGING_FORMAT,
        "source": f"synthetic {size} rows",
        "stage": stage_options,
        "shard": [0, 1],
    }
    (out / STAGING / "options.json").write_text(json.dumps(options, default=str))
    (out / STAGING / "complete.json").write_text(json.dumps({"shard": [0, 1]}))
    return out


def step_finalize(work: Path, size: int) -> dict:
    from ctscribe.prepare.run import FinalizeOptions, finalize

    out = work / f"data-{size}"
    started = time.perf_counter()
    stats = finalize(out, FinalizeOptions())
    seconds = time.perf_counter() - started
    return {
        "finalize_s": round(seconds, 2),
        "finalize_rss_gb": round(_peak_rss_gb(), 3),
        "kept": stats["kept"],
        "duplicates": stats["duplicates"],
    }


def step_train(work: Path, size: int, run: str, launched: float) -> dict:
    """Train to the first optimizer step and report the time since launch and the peak RSS there."""
    from transformers import TrainerCallback

    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import train

    out = work / f"run-{size}-{run}"
    shutil.rmtree(out, ignore_errors=True)

    class FirstStep(TrainerCallback):
        """Report at the end of the first optimizer step and end the process there: what follows
        (a final evaluation over the whole validation split, saving) is not the start."""

        def on_step_end(self, args, state, control, **kwargs):
            result = {
                "seconds": round(time.time() - launched, 2),
                "rss_gb": round(_peak_rss_gb(), 3),
                "train_samples": json.loads((out / "data_stats.json").read_text())["train"],
            }
            print(json.dumps(result), flush=True)
            os._exit(0)

    recipe = load_recipe(
        "tiny-cpu",
        ["max_steps=1", "save_steps=1000", "eval_steps=1000", "logging_steps=1"],
        dataset_dir=work / f"data-{size}",
        output_dir=out,
        model_name_or_path=work / "tiny-model",
    )
    train(recipe, callbacks=(FirstStep(),))
    raise RuntimeError("training ended before its first optimizer step")


def step_merge(work: Path, size: int, shards: int = 4) -> dict:
    """`prepare-merge` of N synthesised staging records dealt to ``shards`` shard folders, one image
    file per row (as a real stage writes): the links and the finalize, timed apart."""
    from ctscribe.prepare import run as prepare

    base = synthesise_staging(work, size)
    folders = [work / f"shard-{k}" for k in range(shards)]
    for k, folder in enumerate(folders):
        shutil.rmtree(folder, ignore_errors=True)
        (folder / prepare.STAGING / "units").mkdir(parents=True)
        options = json.loads((base / prepare.STAGING / "options.json").read_text())
        (folder / prepare.STAGING / "options.json").write_text(json.dumps({**options, "shard": [k, shards]}))
        (folder / prepare.STAGING / "complete.json").write_text("{}")
    for number, unit in enumerate(sorted((base / prepare.STAGING / "units").glob("*.jsonl"))):
        folder, lines = folders[number % shards], []
        for line in unit.read_text().splitlines():
            record = json.loads(line)
            if record["image"].startswith("images/pool/"):
                source = base / record["image"]
                record["image"] = prepare.image_relpath(record["id"])
                (folder / record["image"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, folder / record["image"])
            lines.append(json.dumps(record) + "\n")
        (folder / prepare.STAGING / "units" / unit.name).write_text("".join(lines))
    out = work / "merged"
    shutil.rmtree(out, ignore_errors=True)
    seconds: dict = {}
    finalize = prepare.finalize

    def timed_finalize(folder: Path, options) -> dict:
        seconds["link"] = time.perf_counter() - started
        begun = time.perf_counter()
        stats = finalize(folder, options)
        seconds["finalize"] = time.perf_counter() - begun
        return stats

    prepare.finalize = timed_finalize  # merge_shards calls it after linking
    started = time.perf_counter()
    prepare.merge_shards(folders, out, prepare.FinalizeOptions())
    for folder in [*folders, out, base]:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "merge_link_s": round(seconds["link"], 2),
        "merge_link_us_per_row": round(1e6 * seconds["link"] / size, 1),
        "merge_finalize_s": round(seconds["finalize"], 2),
    }


def run_step(work: Path, step: str, size: int, run: str = "") -> dict:
    """Run one step in a fresh process; its JSON result."""
    command = [sys.executable, __file__, "--work", str(work), "--step", step, "--size", str(size)]
    if run:
        command += ["--run", run]
    env = {**os.environ, "SCALE_LAUNCHED": repr(time.time())}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=4 * 3600)
    if done.returncode:
        raise RuntimeError(f"step {step} at {size} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def measure(work: Path, size: int, stage_max: int) -> dict:
    result: dict = {}
    if size <= stage_max:
        staged = run_step(work, "stage", size)
        result.update(staged, stage_ms_per_row=round(1000 * staged["stage_s"] / size, 3))
    synthesise_staging(work, size)
    finalized = run_step(work, "finalize", size)
    result.update(finalized, finalize_us_per_row=round(1e6 * finalized["finalize_s"] / size, 1))
    cold = run_step(work, "train", size, "cold")
    warm = run_step(work, "train", size, "restart")
    for run in ("cold", "restart"):
        shutil.rmtree(work / f"run-{size}-{run}", ignore_errors=True)
    result.update(
        train_start_s=cold["seconds"],
        train_start_rss_gb=cold["rss_gb"],
        train_restart_s=warm["seconds"],
        train_restart_rss_gb=warm["rss_gb"],
        train_samples=cold["train_samples"],
    )
    shutil.rmtree(work / f"data-{size}", ignore_errors=True)
    return result


def table(results: dict) -> str:
    columns = [
        ("stage_ms_per_row", "stage ms/row"),
        ("stage_rss_gb", "stage RSS GB"),
        ("finalize_s", "finalize s"),
        ("finalize_us_per_row", "finalize us/row"),
        ("finalize_rss_gb", "finalize RSS GB"),
        ("train_start_s", "train start s"),
        ("train_restart_s", "restart s"),
        ("train_start_rss_gb", "start RSS GB"),
        ("train_restart_rss_gb", "restart RSS GB"),
    ]
    lines = [
        "| rows | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for size, row in results["sizes"].items():
        cells = [str(row.get(key, "-")) for key, _ in columns]
        lines.append(f"| {int(size):,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000", help="comma-separated row counts")
    parser.add_argument("--json", type=Path, default=Path("scale.json"))
    parser.add_argument("--stage-max", type=int, default=100_000, help="largest size whose stage is timed")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--merge-size", type=int, default=0, help="also time prepare-merge of N rows")
    parser.add_argument("--step", choices=["stage", "finalize", "train", "merge"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.step:
        steps = {
            "stage": lambda: step_stage(args.work, args.size),
            "finalize": lambda: step_finalize(args.work, args.size),
            "merge": lambda: step_merge(args.work, args.size),
            "train": lambda: step_train(args.work, args.size, args.run, float(os.environ["SCALE_LAUNCHED"])),
        }
        print(json.dumps(steps[args.step]()))
        return

    from ctscribe.fixtures.tiny_model import build_tiny_model

    work = args.work or Path(tempfile.mkdtemp(prefix="ctscribe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tiny-model").exists():
        build_tiny_model(work / "tiny-model")
    results: dict = {"device": f"cpu ({os.cpu_count()} cores, {platform.machine()})", "sizes": {}}
    if args.json.exists():  # runs split per size (one size per locked run) merge into one file
        previous = json.loads(args.json.read_text())
        results["sizes"].update(previous.get("sizes", {}))
        results.update({key: value for key, value in previous.items() if key == "merge"})

    def save() -> None:
        """Write what is measured so far: a run of many sizes keeps each one as it finishes."""
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")

    if args.merge_size:
        results["merge"] = {"rows": args.merge_size, "shards": 4, **run_step(work, "merge", args.merge_size)}
        save()
        print(json.dumps(results["merge"]), flush=True)
    for size in (int(s) for s in args.sizes.split(",") if s):
        print(f"{size} rows ...", flush=True)
        results["sizes"][str(size)] = measure(work, size, args.stage_max)
        results["sizes"] = dict(sorted(results["sizes"].items(), key=lambda kv: int(kv[0])))
        save()
        print(json.dumps({size: results["sizes"][str(size)]}), flush=True)
    print(table(results))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
