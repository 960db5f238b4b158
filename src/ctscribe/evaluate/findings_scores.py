"""Findings scores: the clinical findings a prediction states against its reference's.

N-gram metrics reward copying MedTrinity's template; a description that names the wrong organ or
invents a haemorrhage can still score well. These scores compare what the two texts *say*, as
:func:`ctscribe.clinical.findings.parse_findings` reads it, with percentile bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctscribe.clinical.findings import Findings, analyse_sentence, split_sentences
from ctscribe.evaluate.bootstrap import Columns
from ctscribe.text import is_chinese


def findings_sentence(text: str) -> str:
    """The sentence(s) that state the findings: those naming an abnormality type (present or
    absent), the region of interest, or a normal result ("No focal abnormality is seen"). The
    anatomy overview ("The image is a CT scan of the chest, showing …") and the consequences
    ("This abnormality may cause …") are left out. "" when no sentence qualifies."""
    kept = [
        s.text
        for s in map(analyse_sentence, split_sentences(text))
        if s.present or s.absent or s.roi or s.normal or s.normal_negated
    ]
    return ("" if is_chinese(text) else " ").join(kept)


# ---------------------------------------------------------------------------------------------
# Scores

# Per-sample arrays score_findings returns; NaN where a sample's reference gives nothing to check.
PER_SAMPLE = ("region", "region_overlap", "tp", "fp", "fn", "laterality", "abnormal", "modality")


def _match(pred: object, ref: object) -> float:
    return float("nan") if ref is None else float(pred == ref)


def score_findings(predictions: Sequence[Findings], references: Sequence[Findings]) -> dict:
    """Findings scores of predictions against references (same order), all on 0..1.

    - ``region_acc``: share of samples whose prediction names the reference's body part
      (``body_part`` equal; a prediction naming none is wrong), over references that name one.
    - ``region_overlap``: mean Jaccard overlap of the organ/region sets, over references naming any.
    - ``abnormality_precision``/``_recall``/``_f1``: micro-averaged over abnormality types: a type in
      both is a true positive, only in the prediction a false positive, only in the reference a
      false negative; totals over the corpus, then P = tp/(tp+fp), R = tp/(tp+fn), F1 = 2tp/(2tp+fp+fn).
    - ``hallucination_rate``: share of predicted types absent from their reference, fp/(tp+fp).
    - ``omission_rate``: share of reference types missing from the prediction, fn/(tp+fn).
    - ``laterality_acc``: exact match of the side set, over references that state a side.
    - ``abnormal_acc``: normal/abnormal agreement, over references that state either.
    - ``modality_acc``: modality agreement, over references that name one.

    A score with nothing to count is NaN. ``per_sample`` holds one array per name in
    :data:`PER_SAMPLE` for :func:`findings_intervals`; ``n`` is the number of samples.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    rows = []
    for p, r in zip(predictions, references, strict=True):
        union = p.regions | r.regions
        rows.append(
            (
                _match(p.body_part, r.body_part),
                len(p.regions & r.regions) / len(union) if r.regions else float("nan"),
                len(p.abnormalities & r.abnormalities),
                len(p.abnormalities - r.abnormalities),
                len(r.abnormalities - p.abnormalities),
                _match(p.laterality, r.laterality or None),
                _match(p.abnormal, r.abnormal),
                _match(p.modality, r.modality),
            )
        )
    table = np.asarray(rows, dtype=float).reshape(len(rows), len(PER_SAMPLE))
    per_sample = {name: table[:, k] for k, name in enumerate(PER_SAMPLE)}
    totals = table[:, 2:5].sum(axis=0)[None, :]
    return {
        "n": len(rows),
        "region_acc": _nanmean(per_sample["region"]),
        "region_overlap": _nanmean(per_sample["region_overlap"]),
        "abnormality_precision": float(_precision(totals)[0]),
        "abnormality_recall": float(_recall(totals)[0]),
        "abnormality_f1": float(_micro_f1(totals)[0]),
        "hallucination_rate": float(1 - _precision(totals)[0]),
        "omission_rate": float(1 - _recall(totals)[0]),
        "laterality_acc": _nanmean(per_sample["laterality"]),
        "abnormal_acc": _nanmean(per_sample["abnormal"]),
        "modality_acc": _nanmean(per_sample["modality"]),
        "per_sample": per_sample,
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _precision(totals: np.ndarray) -> np.ndarray:  # columns tp, fp, fn
    return _ratio(totals[:, 0], totals[:, 0] + totals[:, 1])


def _recall(totals: np.ndarray) -> np.ndarray:
    return _ratio(totals[:, 0], totals[:, 0] + totals[:, 2])


def _micro_f1(totals: np.ndarray) -> np.ndarray:
    return _ratio(2 * totals[:, 0], 2 * totals[:, 0] + totals[:, 1] + totals[:, 2])


def findings_columns(scores: dict) -> dict[str, Columns]:
    """Every score of :func:`score_findings` as resampleable :class:`Columns`, one row per sample:
    accuracies are means of their per-sample 0/1 values (NaN rows not counted); the micro-averaged
    scores are statistics of the tp/fp/fn totals."""
    ps = scores["per_sample"]
    counts = np.stack([ps["tp"], ps["fp"], ps["fn"]], axis=1)
    return {
        "region_acc": Columns.of(ps["region"]),
        "region_overlap": Columns.of(ps["region_overlap"]),
        "abnormality_precision": Columns.of(counts, _precision),
        "abnormality_recall": Columns.of(counts, _recall),
        "abnormality_f1": Columns.of(counts, _micro_f1),
        "hallucination_rate": Columns.of(counts, lambda t: 1 - _precision(t)),
        "omission_rate": Columns.of(counts, lambda t: 1 - _recall(t)),
        "laterality_acc": Columns.of(ps["laterality"]),
        "abnormal_acc": Columns.of(ps["abnormal"]),
        "modality_acc": Columns.of(ps["modality"]),
    }


def findings_intervals(
    scores: dict, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every score of :func:`score_findings`, from
    :func:`findings_columns`. The same seed gives every metric the same resamples."""
    return {
        name: columns.ci(n_resamples=n_resamples, seed=seed, alpha=alpha)
        for name, columns in findings_columns(scores).items()
    }
