"""Study evaluation figures: the phantom reader stand-in, and the tiny model trained for the learning check.

Builds the phantom series (``ctscribe fixtures phantom-series``), trains the tiny random Qwen2-VL as
tests/conftest.py's ``trained_run`` does (the tiny-cpu recipe on 400 short-caption phantom rows, every
lesion slice boxed), saves it, and scores with :func:`ctscribe.evaluate.study.evaluate_studies`, the
function behind ``ctscribe evaluate --study``:

- the stand-in (support.study_reader; not a model: the ceiling the flow allows);
- the trained tiny model, with the untrained random tiny model as its base.

The trained model was taught MedTrinity-style captions of single slices ("CT of the chest. A lesion is
present on the left side.", image side), not this phantom's vocabulary or patient sides: its figures are
what they are. The same scoring for the trained model from the command line is printed at the end.

Usage: python bench/study_eval.py [--work DIR] [--json bench/results/study_eval-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from ctscribe.ct.images import ImageOptions
from ctscribe.evaluate.study import evaluate_studies, metric_rows
from ctscribe.fixtures.learning import EVAL_PROMPT, LEARNING_PIXELS, LEARNING_ROI_SHARE, LEARNING_SPLITS
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.phantom_series import build_phantom_series
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.prepare.run import StageOptions, run_prepare
from ctscribe.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: test-only helpers
from ctscribe.train.native import train
from support.study_reader import PhantomReaderEngine


def trained_model(work: Path, base: Path) -> Path:
    """The tiny model trained as the test suite's trained_run (kept in ``work`` for reruns)."""
    run_dir = work / "run"
    if (run_dir / "model" / "config.json").exists():
        return run_dir / "model"
    build_phantom(work / "phantom", rows=400, seed=1, short_captions=True, roi_share=LEARNING_ROI_SHARE)
    stage = StageOptions(image=ImageOptions(max_pixels=LEARNING_PIXELS))
    run_prepare(str(work / "phantom"), work / "data", stage, LEARNING_SPLITS, workers=2, show_progress=False)
    recipe = load_recipe(
        "tiny-cpu", dataset_dir=str(work / "data"), output_dir=str(run_dir), model_name_or_path=str(base)
    )
    train(recipe)
    return run_dir / "model"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctscribe-study-eval"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/study_eval-cpu.json"))
    args = parser.parse_args()
    work = args.work
    truth = work / "series" / "truth.json"
    if not truth.exists():
        build_phantom_series(work / "series")
    base = work / "tiny"
    if not (base / "config.json").exists():
        build_tiny_model(base)
    start = time.perf_counter()
    model = trained_model(work, base)
    trained_seconds = time.perf_counter() - start
    options = {"prompt": EVAL_PROMPT, "batch_size": 8, "max_new_tokens": 64}
    stand_in = evaluate_studies(
        lambda: PhantomReaderEngine(LEARNING_PIXELS), truth, work / "stand-in", **options
    )
    tiny = evaluate_studies(
        lambda: TransformersEngine(model, max_pixels=LEARNING_PIXELS),
        truth,
        work / "tiny-trained",
        make_baseline=lambda: TransformersEngine(base, max_pixels=LEARNING_PIXELS),
        **options,
    )
    for name, metrics in (("stand-in", stand_in), ("tiny trained (base beside)", tiny)):
        print(f"\n{name}")
        for label, value, baseline in metric_rows(metrics):
            print(f"  {label:<20} {value:<36} {baseline}")
    result = {
        "machine": platform.processor() or platform.machine(),
        "pixels": LEARNING_PIXELS,
        "max_new_tokens": options["max_new_tokens"],
        "train_seconds": trained_seconds,
        "stand_in": stand_in,
        "tiny_trained": tiny,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    print(
        f"CLI: ctscribe evaluate --study --data {truth} --model {model} --baseline {base} "
        f"--max-pixels {LEARNING_PIXELS} --max-new-tokens 64 --out {work / 'cli'}"
    )


if __name__ == "__main__":
    main()
