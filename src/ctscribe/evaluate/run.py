"""``ctscribe evaluate``: generate for a test split with the shared engine, score, and report.

    test.json --predict--> REPORT_DIR/predictions.jsonl (and baseline_predictions.jsonl)
              --follow-ups--> dialogue_predictions.jsonl (records prepared with --dialogue only)
              --score----> metrics.json --report--> report.md, *.png, gallery.html
                                 (and RUN_DIR/eval/metrics.json with --run-dir: ctscribe.run_folder)

Generation is ``ctscribe predict`` itself, so it batches, resumes (a killed evaluation continues
where it stopped) and records failures the same way. Engines are built one at a time through the
factories given, so the model and the baseline never hold GPU memory together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ctscribe.evaluate.dialogue import answer_followups, followup_records, score_dialogues
from ctscribe.evaluate.options import EvaluateOptions
from ctscribe.evaluate.report import build_report
from ctscribe.evaluate.scores import read_predictions, score_records, scored_texts
from ctscribe.evaluate.text_metrics import ptb_tokenize
from ctscribe.generate.engine import GenerationBackend
from ctscribe.generate.options import GenerateOptions
from ctscribe.predict import predict
from ctscribe.run_folder import write_evaluation

log = logging.getLogger(__name__)


def _generate(
    make_engine: Callable[[], GenerationBackend],
    data: Path,
    path: Path,
    dialogue_path: Path | None,
    **options,
) -> str:
    """Descriptions into ``path``; with ``dialogue_path``, the follow-up answers after them."""
    engine = make_engine()
    summary = predict(engine, [data], path, **options)
    log.info(
        "%s: %d generated, %d already done, %d failed",
        path.name,
        summary.written,
        summary.skipped,
        summary.failed,
    )
    if dialogue_path is not None:
        answered = answer_followups(engine, data, read_predictions(path), dialogue_path, **options)
        log.info("%s: %d dialogue(s) answered", dialogue_path.name, answered)
    name = engine.name
    del engine  # free its memory before the next model loads
    return name


def run_evaluation(
    make_engine: Callable[[], GenerationBackend],
    data: Path,
    out: Path,
    *,
    make_baseline: Callable[[], GenerationBackend] | None = None,
    run_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = GenerateOptions.batch_size,
    max_new_tokens: int = GenerateOptions.max_new_tokens,
    examples: int = EvaluateOptions.examples,
    with_meteor: bool = True,
    bertscore_model: Path | None = None,
) -> dict:
    """Evaluate on the split JSON ``data``; writes REPORT_DIR ``out`` and returns metrics.json's content.

    With ``run_dir`` (the training run of the evaluated model) the report gets its loss curve, and
    metrics.json is also kept in the run folder, where the model card of a later export reads it.
    """
    if not data.is_file():
        raise FileNotFoundError(f"no test split at {data}; give the test.json that ctscribe prepare wrote")
    out.mkdir(parents=True, exist_ok=True)
    scoring = {"with_meteor": with_meteor, "bertscore_model": bertscore_model}
    options = {"limit": limit, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    has_dialogue = bool(followup_records(data, limit))

    def generate(make: Callable[[], GenerationBackend], prefix: str) -> tuple[str, list[dict], Path | None]:
        """Generate for one system; returns its name, prediction records and dialogue answers' file."""
        path, dialogue_path = out / f"{prefix}predictions.jsonl", out / f"{prefix}dialogue_predictions.jsonl"
        name = _generate(make, data, path, dialogue_path if has_dialogue else None, **options)
        return name, read_predictions(path), dialogue_path if has_dialogue else None

    systems = [generate(make_engine, "")]
    if make_baseline is not None:
        systems.append(generate(make_baseline, "baseline_"))
    # Every text of both systems through the PTB tokeniser at once: one JVM start per evaluation.
    ptb = ptb_tokenize(text for _, records, _ in systems for text in scored_texts(records))
    blocks = []
    for name, records, dialogue_path in systems:
        block = {"model": name, **score_records(records, ptb=ptb, **scoring)}
        if dialogue_path is not None:
            block["dialogue"] = score_dialogues(read_predictions(dialogue_path))
        blocks.append(block)
    metrics = {"data": str(data), **blocks[0]}
    if len(blocks) > 1:
        metrics["baseline"] = blocks[1]
    baseline = systems[1][1] if len(systems) > 1 else []
    build_report(out, metrics, systems[0][1], baseline, run_dir, examples)
    if run_dir is not None:
        log.info("results kept in the run folder: %s", write_evaluation(run_dir, metrics))
    return metrics
