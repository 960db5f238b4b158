"""Box IoU: does a description point at the same place as its reference?

A grounded answer says where its finding is with a box in the grounding format
(:mod:`ctscribe.conversation.boxes`). Per test sample whose *reference* holds a box, the first box of
the prediction is compared with the first box of the reference, both on the 0-1000 grid of the
prepared image (the frame the model sees):

- ``mean_iou``: mean intersection over union, a prediction without a parseable box counting 0, so a
  model cannot score by leaving out the boxes it is unsure of;
- ``iou50``: share of samples with IoU >= 0.5 (the usual "hit" of detection benchmarks);
- ``parseable``: share of samples whose prediction holds a well-formed box at all.

Samples whose reference has no box are not counted (``without_reference_box`` says how many; of those,
``boxed_without_reference`` holds a predicted box anyway). Only the first box on each side is used:
MedTrinity's captions ground one region each, and taking a prediction's best-matching box instead
would reward a model that draws many. Intervals are percentile bootstraps over samples
(:mod:`ctscribe.evaluate.bootstrap`), as for every other metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctscribe.conversation.boxes import GridBox, box_iou, parse_boxes
from ctscribe.evaluate.bootstrap import Columns, json_number

IOU_HIT = 0.5  # PASCAL VOC's threshold, the one grounding papers (RefCOCO) report
BOX_METRICS = ("mean_iou", "iou50", "parseable")


def first_box(text: str) -> GridBox | None:
    """The first well-formed box in ``text``, or None."""
    found = parse_boxes(text)
    return found[0].box if found else None


def box_columns(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Columns]:
    """:data:`BOX_METRICS` as :class:`Columns`, one row per sample; a sample whose reference has no
    box is NaN (not counted)."""
    pairs = [(first_box(p), first_box(r)) for p, r in zip(predictions, references, strict=True)]
    iou = np.array(
        [np.nan if r is None else box_iou(p, r) if p is not None else 0.0 for p, r in pairs], dtype=float
    )
    counted = np.array([r is not None for _, r in pairs], dtype=bool)
    parseable = np.array([float(p is not None) for p, _ in pairs])
    return {
        "mean_iou": Columns.of(iou),
        "iou50": Columns.of(np.where(counted, (iou >= IOU_HIT).astype(float), np.nan)),
        "parseable": Columns.of(np.where(counted, parseable, np.nan)),
    }


def score_boxes(predictions: Sequence[str], references: Sequence[str], seed: int = 0) -> dict:
    """metrics.json's ``boxes`` block for texts with their grounding markup (not stripped)."""
    references_boxed = [first_box(r) is not None for r in references]
    counted = sum(references_boxed)
    unboxed = [p for p, boxed in zip(predictions, references_boxed, strict=True) if not boxed]
    block: dict = {
        "n": counted,
        "without_reference_box": len(references) - counted,
        "boxed_without_reference": sum(first_box(p) is not None for p in unboxed),
        "ci95": {},
    }
    if not counted:
        return {**block, **dict.fromkeys(BOX_METRICS)}
    rows = np.flatnonzero(references_boxed)  # intervals over the counted samples alone
    for name, columns in box_columns(predictions, references).items():
        block[name] = json_number(columns.score())
        block["ci95"][name] = [json_number(v) for v in columns.rows(rows).ci(seed=seed)]
    return block
