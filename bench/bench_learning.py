"""Learning curve of the tiny model on phantom data: region and lesion accuracy over training steps.

Trains the tiny random Qwen2-VL (full fine-tuning, the tiny-cpu recipe) on short-caption phantom CT
and scores every checkpoint on fresh phantom slices against their known facts. Step 0 (untrained)
is the baseline of the same run. The body region is a global property and is learned quickly; lesion
presence is a small local finding and is the harder benchmark.

Without --grounding, answers are plain text (prepare --no-grounding). With --grounding, every
lesion slice has its green box (as in the test suite's learning set), so every "A lesion is present"
answer is grounded, and each checkpoint is also scored on where it puts the region of interest: on
the slices with a green box, the IoU of the model's box with the drawn one (0 where it writes none),
against three baselines on the same slices: a fixed central box (the truth boxes' mean size,
centred), the region's typical box for a side guessed at random (side-blind: seeing the organ, not
the lesion) and the mean truth box of the slice's region and side (what naming the region and side
right, without finding the lesion's exact place, reaches). "unasked box": the share of slices without
a green box whose answer holds a box anyway. Generation keeps the grounding tokens.

With --ask-where (and --grounding), the data is prepared with --dialogue, so each boxed row is also
asked "Where is the region of interest?" and answers with its box; each checkpoint is then asked that
question on the same boxed slices after the reference description (ctscribe.fixtures.learning.
score_where): with the box left out of the description, the answer's box must come from the image
(pointing, apart from deciding whether there is a lesion); with it kept, it can be repeated (copying,
whether the follow-up was learned at all). Same baselines, same slices.

Usage: python bench/bench_learning.py [--steps 1500] [--every 100] [--rows 600] [--grounding [--ask-where]]
       [--json bench-learning.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ctscribe.ct.images import ImageOptions
from ctscribe.fixtures.learning import LEARNING_PIXELS as PIXELS
from ctscribe.fixtures.learning import (
    LEARNING_ROI_SHARE,
    PhantomScore,
    WhereScore,
    score_on_phantom,
    score_where,
)
from ctscribe.fixtures.phantom import ROI_SHARE, build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.prepare.run import FinalizeOptions, StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train

BOX_COLUMNS = ("box parsed", "mean IoU", "IoU>=0.5", "central IoU", "side-blind", "prior IoU", "unasked box")
WHERE_COLUMNS = ("where parsed", "where IoU", "where>=0.5", "copy IoU")


def curve_row(step: int, score: PhantomScore, where: WhereScore | None, grounding: bool) -> dict:
    row = {"step": step, "region_accuracy": score.region_accuracy, "lesion_accuracy": score.lesion_accuracy}
    if grounding:
        row.update({f"box_{key}": value for key, value in asdict(score.box).items()})
    if where is not None:
        row.update({f"where_{key}": value for key, value in asdict(where.pointing).items()})
        row.update({f"copy_{key}": value for key, value in asdict(where.copying).items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--grounding", action="store_true", help="box every lesion slice; score box IoU")
    parser.add_argument(
        "--ask-where",
        action="store_true",
        help="with --grounding: prepare --dialogue; score the where follow-up",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-learning.json"))
    args = parser.parse_args()
    if args.ask_where and not args.grounding:
        parser.error("--ask-where needs --grounding")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", size=args.size)
        roi_share = LEARNING_ROI_SHARE if args.grounding else ROI_SHARE
        build_phantom(root / "phantom", rows=args.rows, seed=1, short_captions=True, roi_share=roi_share)
        stage = StageOptions(image=ImageOptions(max_pixels=PIXELS))
        # Without --grounding the answers carry no box (the plain curve, as before issue 20).
        finalize = FinalizeOptions(dialogue=args.ask_where, grounding=args.grounding)
        stats = run_prepare(
            str(root / "phantom"), root / "data", stage, finalize, workers=2, show_progress=False
        )
        # A dialogue record (description and 6-8 follow-ups) is longer than tiny-cpu's cutoff_len.
        longer = ["cutoff_len=512"] if args.ask_where else []
        recipe = load_recipe(
            "tiny-cpu",
            [
                *longer,
                f"max_steps={args.steps}",
                f"save_steps={args.every}",
                f"eval_steps={args.every}",
                f"save_total_limit={args.steps // args.every + 1}",
            ],
            dataset_dir=str(root / "data"),
            output_dir=str(root / "run"),
            model_name_or_path=str(model),
        )
        start = time.perf_counter()
        train(recipe)
        train_s = time.perf_counter() - start
        scores = []
        for step in range(0, args.steps + 1, args.every):
            folder = root / "run" / f"checkpoint-{step}" if step else model
            checkpoint = TransformersEngine(folder, max_pixels=PIXELS, processor=model)
            where = score_where(checkpoint, roi_share=roi_share) if args.ask_where else None
            scores.append((step, score_on_phantom(checkpoint, roi_share=roi_share), where))

    _, last, last_where = scores[-1]
    columns = (
        "region acc",
        "lesion acc",
        *(BOX_COLUMNS if args.grounding else ()),
        *(WHERE_COLUMNS if args.ask_where else ()),
    )
    boxed = f", {last.box.n} with a green box" if args.grounding else ""
    print(f"n={last.n} fresh phantom CT slices{boxed}; machine shared with other jobs")
    print(f"{'step':>6} | " + " | ".join(f"{column:>11}" for column in columns))
    for step, score, where in scores:
        values = [score.region_accuracy, score.lesion_accuracy]
        if args.grounding:
            box = score.box
            unasked = box.unasked / (score.n - box.n)  # share of the slices without a green box
            values += [
                box.parsed,
                box.iou,
                box.hit_rate,
                box.central_iou,
                box.side_blind_iou,
                box.prior_iou,
                unasked,
            ]
        if where is not None:
            values += [where.pointing.parsed, where.pointing.iou, where.pointing.hit_rate, where.copying.iou]
        print(f"{step:>6} | " + " | ".join(f"{value:>11.3f}" for value in values))
    print("example answers at the last step:", *last.examples, sep="\n  ")
    if last_where is not None:
        print("where answers at the last step (truth, answer):", *last_where.examples, sep="\n  ")
    result = {
        "size": args.size,
        "rows": args.rows,
        "kept": stats["kept"],
        "grounded_rows": stats["grounded"],
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
        "n": last.n,
        "dialogue": args.ask_where,
        "curve": [curve_row(step, score, where, args.grounding) for step, score, where in scores],
        "examples": last.examples,
        "where_examples": last_where.examples if last_where else None,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"training took {train_s:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
