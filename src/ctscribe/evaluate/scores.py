"""Every number of an evaluation, from predictions files: text metrics, findings, box IoU, intervals,
breakdowns.

Scoring reads the JSONL that generation wrote (``ctscribe.predict``) and nothing else, so a report can
be recomputed, or a metric added, without generating again. Text metrics and findings read plain
captions: the grounding markup is removed from predictions and references alike, and the boxes are
scored on their own (:mod:`ctscribe.evaluate.grounding`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ctscribe.clinical.findings import parse_findings
from ctscribe.conversation.boxes import strip_grounding
from ctscribe.evaluate.bootstrap import json_number
from ctscribe.evaluate.findings_scores import findings_intervals, findings_sentence, score_findings
from ctscribe.evaluate.grounding import score_boxes
from ctscribe.evaluate.text_metrics import ptb_tokenize, text_metrics

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


def _text_block(
    predictions: Sequence[str],
    references: Sequence[str],
    with_meteor: bool,
    seed: int,
    ptb: Mapping[str, str] | None,
    bertscore_model: Path | None = None,
) -> dict:
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
    for name, result in results.items():
        block[name] = json_number(result.score)
        block["ci95"][name] = [json_number(v) for v in result.ci(seed=seed)]
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
    """Every text :func:`score_records` tokenises: predictions, references and their findings sentences."""
    texts = [text for pair in zip(*plain_texts(records), strict=True) for text in pair]
    return texts + [findings_sentence(text) for text in texts]


def score_records(
    records: Sequence[dict],
    *,
    with_meteor: bool = False,
    seed: int = 0,
    bertscore_model: Path | None = None,
    ptb: Mapping[str, str] | None = None,
) -> dict:
    """metrics.json's block for one model: text metrics, findings, findings-sentence metrics, regions.

    ``ptb``: :func:`ptb_tokenize` of :func:`scored_texts` (an evaluation tokenises model and baseline
    together, in one JVM start); without it the texts are tokenised here.
    """
    scored = _scored(records)
    failed = sum(1 for r in records if r.get("status") != "ok")
    predictions, references = plain_texts(records)
    if ptb is None:
        ptb = ptb_tokenize(scored_texts(records))
    metrics = {
        "failed": failed,
        **_text_block(predictions, references, with_meteor, seed, ptb, bertscore_model),
    }
    if not scored:
        return metrics
    metrics["boxes"] = score_boxes([model_text(r) for r in scored], [r["reference"] for r in scored], seed)

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

    # The same text metrics on the findings sentence alone: the templated anatomy overview that
    # inflates n-gram scores is left out. Samples whose reference has no findings sentence are skipped.
    pairs = [
        (findings_sentence(p), findings_sentence(r)) for p, r in zip(predictions, references, strict=True)
    ]
    pairs = [(p, r) for p, r in pairs if r]
    metrics["findings_sentence"] = _text_block([p for p, _ in pairs], [r for _, r in pairs], False, seed, ptb)

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
    return metrics
