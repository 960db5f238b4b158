"""``ctscribe evaluate``: generate for a test split with the shared engine, score, and report.

    test.json --predict--> REPORT_DIR/predictions.jsonl (and baseline_predictions.jsonl)
              --follow-ups--> dialogue_predictions.jsonl (records prepared with --dialogue only)
              --swapped images--> swapped_predictions.jsonl (with image_swap: the model again, each
                                  image replaced by another record's, ctscribe.evaluate.image_swap)
              --score----> metrics.json --report--> report.md, *.png, gallery.html
                                 (and RUN_DIR/eval/metrics.json with --run-dir: ctscribe.run_folder)

Generation is ``ctscribe predict`` itself, so it batches, resumes (a killed evaluation continues
where it stopped) and records failures the same way. Engines are built one at a time through the
factories given, so the model and the baseline never hold GPU memory together.
:func:`compare_predictions` scores two predictions files already written, without a model.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ctscribe.conversation.records import record_text
from ctscribe.evaluate.dialogue import answer_followups, followup_records, score_dialogues
from ctscribe.evaluate.image_swap import SWAPPED_SPLIT, write_swapped_split
from ctscribe.evaluate.options import EvaluateOptions
from ctscribe.evaluate.report import build_report
from ctscribe.evaluate.scores import compare_systems, read_predictions, score_system, scored_texts
from ctscribe.evaluate.text_metrics import ptb_tokenize
from ctscribe.generate.engine import GenerationBackend
from ctscribe.generate.options import GenerateOptions
from ctscribe.predict import predict
from ctscribe.run_folder import write_evaluation

if TYPE_CHECKING:
    from ctscribe.evaluate.entity_metrics import EntityMetrics

log = logging.getLogger(__name__)


def _generate(
    make_engine: Callable[[], GenerationBackend],
    jobs: list[tuple[Path, Path, Path | None, int | None]],
    **options,
) -> str:
    """With one engine, for each ``(split, predictions file, dialogue file or None, limit)``: the
    descriptions and, with a dialogue file, the follow-up answers after them."""
    engine = make_engine()
    for data, path, dialogue_path, limit in jobs:
        summary = predict(engine, [data], path, limit=limit, **options)
        log.info(
            "%s: %d generated, %d already done, %d failed",
            path.name,
            summary.written,
            summary.skipped,
            summary.failed,
        )
        if dialogue_path is not None:
            answered = answer_followups(
                engine, data, read_predictions(path), dialogue_path, limit=limit, **options
            )
            log.info("%s: %d dialogue(s) answered", dialogue_path.name, answered)
    name = engine.name
    del engine  # free its memory before the next model loads
    return name


def _score_and_report(
    out: Path,
    data: Path,
    systems: list[tuple[str, list[dict], Path | None]],
    *,
    swapped: tuple[dict, list[dict]] | None = None,
    skipped: dict[str, int] | None = None,
    run_dir: Path | None = None,
    examples: int = EvaluateOptions.examples,
    with_meteor: bool = True,
    bertscore_model: Path | None = None,
    entity: EntityMetrics | None = None,
) -> dict:
    """Score one or two systems ``(name, records, dialogue answers' file)``, compare the first with
    the second, and with ``swapped`` (the swap's summary and the model's swapped-image records) with
    its own images; write the report. ``skipped``: records left out before scoring, {reason: count}.
    Returns metrics.json's content."""
    scoring = {"with_meteor": with_meteor, "bertscore_model": bertscore_model, "entity": entity}
    swapped_records = swapped[1] if swapped else []
    # Every text through the PTB tokeniser at once: one JVM start per evaluation.
    every = [records for _, records, _ in systems] + [swapped_records]
    ptb = ptb_tokenize(text for records in every for text in scored_texts(records))
    scored, blocks = [], []
    for name, records, dialogue_path in systems:
        result = score_system(records, ptb=ptb, **scoring)
        block = {"model": name, **result.block}
        if dialogue_path is not None:
            block["dialogue"] = score_dialogues(read_predictions(dialogue_path))
        scored.append(result)
        blocks.append(block)
    metrics = {"data": str(data), **blocks[0]}
    if len(blocks) > 1:
        metrics["baseline"] = blocks[1]
        metrics["comparison"] = {"against": blocks[1]["model"], **compare_systems(scored[0], scored[1])}
    if swapped is not None:
        with_swapped = score_system(swapped_records, ptb=ptb, **scoring)
        metrics["image_swap"] = {
            **swapped[0],
            "model": with_swapped.block,
            # what the model loses when shown another image: own-image score minus swapped score
            "drop": compare_systems(scored[0], with_swapped),
        }
    if skipped is not None:
        metrics["skipped"] = skipped
    baseline = systems[1][1] if len(systems) > 1 else []
    build_report(out, metrics, systems[0][1], baseline, run_dir, examples)
    if run_dir is not None:
        log.info("results kept in the run folder: %s", write_evaluation(run_dir, metrics))
    return metrics


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
    image_swap: str | None = None,
    entity: EntityMetrics | None = None,
) -> dict:
    """Evaluate on the split JSON ``data``; writes REPORT_DIR ``out`` and returns metrics.json's content.

    With ``run_dir`` (the training run of the evaluated model) the report gets its loss curve, and
    metrics.json is also kept in the run folder, where the model card of a later export reads it.
    With ``image_swap`` (``any`` or ``same-region``) the model also describes the split with swapped
    images, and metrics.json's ``image_swap`` says how much each score drops. With ``entity`` its
    models are loaded once before anything is generated, so that they fail early if they must.
    """
    if not data.is_file():
        raise FileNotFoundError(f"no test split at {data}; give the test.json that ctscribe prepare wrote")
    if entity is not None:
        entity.check()
    out.mkdir(parents=True, exist_ok=True)
    options = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    has_dialogue = bool(followup_records(data, limit))

    def jobs(prefix: str) -> list[tuple[Path, Path, Path | None, int | None]]:
        dialogue_path = out / f"{prefix}dialogue_predictions.jsonl" if has_dialogue else None
        return [(data, out / f"{prefix}predictions.jsonl", dialogue_path, limit)]

    model_jobs = jobs("")
    if image_swap is not None:
        swap = write_swapped_split(data, out / SWAPPED_SPLIT, image_swap, limit=limit)
        log.info("image swap (%s): %d swapped, skipped %s", image_swap, swap["swapped"], swap["skipped"])
        model_jobs.append((out / SWAPPED_SPLIT, out / "swapped_predictions.jsonl", None, None))
    name = _generate(make_engine, model_jobs, **options)
    systems = [(name, read_predictions(model_jobs[0][1]), model_jobs[0][2])]
    if make_baseline is not None:
        _, path, dialogue_path, _ = jobs("baseline_")[0]
        name = _generate(make_baseline, jobs("baseline_"), **options)
        systems.append((name, read_predictions(path), dialogue_path))
    swapped = None
    if image_swap is not None:
        swapped = (swap, read_predictions(out / "swapped_predictions.jsonl"))
    return _score_and_report(
        out,
        data,
        systems,
        swapped=swapped,
        run_dir=run_dir,
        examples=examples,
        with_meteor=with_meteor,
        bertscore_model=bertscore_model,
        entity=entity,
    )


def _with_references(path: Path, references: dict[str, str], skipped: Counter[str]) -> list[dict]:
    """A predictions file's records, each given its reference from the split by ``id``; records
    whose id the split does not hold are left out and counted in ``skipped``."""
    if not path.is_file():
        raise FileNotFoundError(f"no predictions file at {path}")
    records = []
    for record in read_predictions(path):
        reference = references.get(str(record.get("id")))
        if reference is None:
            skipped[f"{path.name}: id not in the split"] += 1
            continue
        records.append({**record, "reference": reference})
    return records


def compare_predictions(
    first: Path,
    second: Path,
    data: Path,
    out: Path,
    *,
    examples: int = EvaluateOptions.examples,
    with_meteor: bool = True,
    bertscore_model: Path | None = None,
    entity: EntityMetrics | None = None,
) -> dict:
    """Score two predictions files (``ctscribe predict``'s JSONL over the split) against the split's
    references, matched by ``id``, and compare the first with the second; no model is loaded.
    Returns metrics.json's content, with ``skipped`` {reason: count} for records left out."""
    if not data.is_file():
        raise FileNotFoundError(f"no test split at {data}; give the test.json the predictions were made on")
    references = {
        str(record["id"]): text
        for record in json.loads(data.read_text(encoding="utf-8"))
        if isinstance(record, dict)
        and record.get("id") is not None
        and (text := record_text(record, "assistant")) is not None
    }
    if entity is not None:
        entity.check()
    skipped: Counter[str] = Counter()
    systems = [(str(path), _with_references(path, references, skipped), None) for path in (first, second)]
    out.mkdir(parents=True, exist_ok=True)
    if skipped:
        log.warning("records left out: %s", dict(skipped))
    return _score_and_report(
        out,
        data,
        systems,
        skipped=dict(skipped),
        examples=examples,
        with_meteor=with_meteor,
        bertscore_model=bertscore_model,
        entity=entity,
    )
