"""Every number of an evaluation, from predictions files: text metrics, findings, box IoU, intervals,
breakdowns.

Scoring reads the JSONL that generation wrote (``ctscribe.predict``) and nothing else, so a report can
be recomputed, or a metric added, without generating again. Text metrics and findings read plain
captions: the grounding markup is removed from predictions and references alike, and the boxes are
scored on their own (:mod:`ctscribe.evaluate.grounding`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctscribe.clinical.findings import parse_findings
from ctscribe.conversation.boxes import strip_grounding
from ctscribe.evaluate.bootstrap import Columns, json_number
from ctscribe.evaluate.findings_scores import (
    findings_columns,
    findings_intervals,
    findings_sentence,
    score_findings,
)
from ctscribe.evaluate.grounding import box_columns, score_boxes
from ctscribe.evaluate.significance import compare_columns
from ctscribe.evaluate.text_metrics import ptb_tokenize, text_metrics
from ctscribe.predict import record_key

if TYPE_CHECKING:
    from ctscribe.evaluate.entity_metrics import EntityMetrics

log = logging.getLogger(__name__)

FINDINGS_METRICS = (
    "region_acc",
    "abnormality_f1",
    "laterality_acc",
    "hallucination_rate",
    "omission_rate",
    "abnormal_acc",
    "region_overlap",
)
MIN_REGION_SAMPLES = 3  # a body part with fewer test samples gets no row in the breakdown


def read_predictions(path: Path) -> list[dict]:
    """The records of a predictions JSONL (torn last lines skipped: generation resumes over them)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


@dataclass(frozen=True)
class Scored:
    """One system's scores: metrics.json's block, and every metric as :class:`Columns` with one row
    per scored record (``keys``, in order), for paired comparisons with another system."""

    block: dict
    keys: list[str]
    columns: dict[tuple[str, ...], Columns]


def record_id(record: dict) -> str:
    """What pairs two systems' records of one test sample: the split record's id, else the input (a
    record with neither can be scored, not paired: comparing refuses the repeated empty key)."""
    return str(record.get("id") or record_key(record.get("input", ""), record.get("slice")))


def _text_block(
    predictions: Sequence[str],
    references: Sequence[str],
    with_meteor: bool,
    seed: int,
    ptb: Mapping[str, str] | None,
    bertscore_model: Path | None = None,
    columns: dict[str, Columns] | None = None,
    entity: EntityMetrics | None = None,
) -> dict:
    """The text metrics' block; with ``columns``, each metric's :class:`Columns` is added to it.

    ``entity``: RaTEScore/RadGraph-F1 to add. Results of stand-in models (random weights: the tests'
    wiring check) are not scores: they go to ``entity_wiring_check`` as counts, never beside the scores.
    """
    block: dict = {"n": len(predictions), "ci95": {}}
    if not predictions:
        return block
    results = text_metrics(predictions, references, with_meteor=with_meteor, ptb=ptb)
    # "ptb": coco-caption's tokens, comparable with published CIDEr; "ctscribe": no Java, not comparable
    block["cider_tokenizer"] = "ptb" if ptb is not None else "ctscribe"
    if bertscore_model is not None:
        from ctscribe.evaluate.bertscore import bertscore, default_layer

        results["bertscore"] = bertscore(predictions, references, bertscore_model)
        block["bertscore_layer"] = default_layer(bertscore_model)
    if entity is not None:
        found = entity.score(predictions, references)
        if found.stand_in:
            log.warning("%s ran on stand-in models (random weights): a wiring check, no score", entity.names)
            block["entity_wiring_check"] = {
                "stand_in_models": found.models,
                "scored": {name: len(result.per_sample) for name, result in found.results.items()},
            }
        else:
            results |= found.results
            block["entity_models"] = found.models
    for name, result in results.items():
        block[name] = json_number(result.score)
        block["ci95"][name] = [json_number(v) for v in result.ci(seed=seed)]
        if columns is not None:
            columns[name] = result.columns()
    return block


def _scored(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok" and r.get("reference")]


def model_text(record: dict) -> str:
    """What the model wrote, grounding markup included: ``raw_text`` where predict keeps it apart
    from the text for readers, else ``text``."""
    return record.get("raw_text", record["text"])


def plain_texts(records: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Predictions and references of the scored records as plain captions, the boxes' markup removed
    from both: text metrics and findings compare words, and box IoU scores where they point."""
    scored = _scored(records)
    return [strip_grounding(model_text(r)) for r in scored], [strip_grounding(r["reference"]) for r in scored]


def scored_texts(records: Sequence[dict]) -> list[str]:
    """Every text :func:`score_system` tokenises: predictions, references and their findings sentences."""
    texts = [text for pair in zip(*plain_texts(records), strict=True) for text in pair]
    return texts + [findings_sentence(text) for text in texts]


def _spread(columns: Columns, rows: Sequence[int], n: int) -> Columns:
    """Columns of a subset of the samples (``rows``) on all ``n``, the others zero: not counted."""
    values = np.zeros((n, columns.values.shape[1]))
    values[np.asarray(rows, dtype=int)] = columns.values
    return Columns(values, columns.statistic)


def score_system(
    records: Sequence[dict],
    *,
    with_meteor: bool = False,
    seed: int = 0,
    bertscore_model: Path | None = None,
    ptb: Mapping[str, str] | None = None,
    entity: EntityMetrics | None = None,
) -> Scored:
    """One system's scores on its predictions' records (see :class:`Scored`).

    ``ptb``: :func:`ptb_tokenize` of :func:`scored_texts` (an evaluation tokenises model and baseline
    together, in one JVM start); without it the texts are tokenised here. ``entity``: the clinical
    entity metrics to add (:mod:`ctscribe.evaluate.entity_metrics`).
    """
    scored = _scored(records)
    keys = [record_id(r) for r in scored]
    failed = sum(1 for r in records if r.get("status") != "ok")
    predictions, references = plain_texts(records)
    if ptb is None:
        ptb = ptb_tokenize(scored_texts(records))
    text_columns: dict[str, Columns] = {}
    metrics = {
        "failed": failed,
        **_text_block(predictions, references, with_meteor, seed, ptb, bertscore_model, text_columns, entity),
    }
    columns: dict[tuple[str, ...], Columns] = {(name,): c for name, c in text_columns.items()}
    if not scored:
        return Scored(metrics, keys, columns)
    texts, reference_texts = [model_text(r) for r in scored], [r["reference"] for r in scored]
    metrics["boxes"] = score_boxes(texts, reference_texts, seed)
    columns |= {("boxes", name): c for name, c in box_columns(texts, reference_texts).items()}

    predicted = [parse_findings(text) for text in predictions]
    expected = [parse_findings(text) for text in references]
    findings = score_findings(predicted, expected)
    intervals = findings_intervals(findings, seed=seed)
    metrics["findings"] = {
        "n": findings["n"],
        **{name: json_number(findings[name]) for name in FINDINGS_METRICS},
        "ci95": {
            name: [json_number(v) for v in intervals[name]] for name in FINDINGS_METRICS if name in intervals
        },
    }
    found = findings_columns(findings)
    columns |= {("findings", name): found[name] for name in FINDINGS_METRICS}

    # The same text metrics on the findings sentence alone: the templated anatomy overview that
    # inflates n-gram scores is left out. Samples whose reference has no findings sentence are skipped.
    pairs = [
        (i, findings_sentence(p), findings_sentence(r))
        for i, (p, r) in enumerate(zip(predictions, references, strict=True))
    ]
    pairs = [(i, p, r) for i, p, r in pairs if r]
    sentence_columns: dict[str, Columns] = {}
    metrics["findings_sentence"] = _text_block(
        [p for _, p, _ in pairs], [r for *_, r in pairs], False, seed, ptb, columns=sentence_columns
    )
    rows = [i for i, *_ in pairs]
    columns |= {
        ("findings_sentence", name): _spread(c, rows, len(scored)) for name, c in sentence_columns.items()
    }

    regions: dict[str, list[int]] = {}
    for index, reference in enumerate(expected):
        if reference.body_part is not None:
            regions.setdefault(reference.body_part, []).append(index)
    per_sample = findings["per_sample"]
    metrics["per_region"] = {
        part: {
            "n": len(indices),
            "region_acc": json_number(float(np.nanmean(per_sample["region"][indices]))),
            "abnormality_f1": json_number(
                score_findings([predicted[i] for i in indices], [expected[i] for i in indices])[
                    "abnormality_f1"
                ]
            ),
        }
        for part, indices in sorted(regions.items())
        if len(indices) >= MIN_REGION_SAMPLES
    }
    return Scored(metrics, keys, columns)


def compare_systems(a: Scored, b: Scored, *, seed: int = 0) -> dict:
    """metrics.json's comparison of A against B on the samples both scored, matched by
    :func:`record_id`: ``n`` and, for every metric, the difference A - B with its interval and p
    (:func:`ctscribe.evaluate.significance.compare_columns`).

    Each metric keeps the rows each system was scored with, so where one system failed on samples
    the other scored, CIDEr keeps the IDF of its own references (a slight approximation).
    """
    position = {key: i for i, key in enumerate(b.keys)}
    if len(position) != len(b.keys) or len(set(a.keys)) != len(a.keys):
        raise ValueError("records are paired by id, and some id occurs twice in one predictions file")
    shared = [(i, position[key]) for i, key in enumerate(a.keys) if key in position]
    rows_a, rows_b = [i for i, _ in shared], [j for _, j in shared]
    return {
        "n": len(shared),
        **compare_columns(
            {path: c.rows(rows_a) for path, c in a.columns.items()},
            {path: c.rows(rows_b) for path, c in b.columns.items()},
            seed=seed,
        ),
    }
