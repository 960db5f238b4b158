"""Findings scores on a hand-computed case, their bootstrap intervals, and the findings sentence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctscribe.clinical.findings import Findings
from ctscribe.evaluate.findings_scores import findings_intervals, findings_sentence, score_findings


def test_findings_sentence() -> None:
    abnormal = (
        "The image is a computed tomography (CT) scan of the chest, showing both lungs, the heart, the "
        "mediastinum and the thoracic spine. The region of interest, located on the left side of the image "
        "in the lung, shows a small soft-tissue density area consistent with a pulmonary nodule. This "
        "abnormality may cause compression of the surrounding lung tissue."
    )
    assert findings_sentence(abnormal) == (
        "The region of interest, located on the left side of the image in the lung, shows a small "
        "soft-tissue density area consistent with a pulmonary nodule."
    )
    normal = (
        "The image is a computed tomography (CT) scan of the chest, showing both lungs. No focal "
        "abnormality is seen, and both lungs appear clear. The surrounding structures appear unremarkable."
    )
    assert findings_sentence(normal) == (
        "No focal abnormality is seen, and both lungs appear clear. "
        "The surrounding structures appear unremarkable."
    )
    chinese = "这是一张颅脑CT图像，显示脑室。感兴趣区位于图像左侧，提示颅内出血。该异常可能导致占位效应。"
    assert findings_sentence(chinese) == "感兴趣区位于图像左侧，提示颅内出血。"
    assert findings_sentence("CT of the head. No lesion is seen.") == "No lesion is seen."
    assert findings_sentence("The image is a CT scan of the chest.") == ""
    assert findings_sentence("") == ""


# ---------------------------------------------------------------------------------------------
# score_findings on a hand-computed case


def _f(body, regions, abn, lat, abnormal, modality) -> Findings:
    return Findings(modality, frozenset(regions), frozenset(abn), frozenset(lat), abnormal, body)


REFS = [
    _f("chest", {"chest", "lung"}, {"nodule"}, {"right"}, True, "CT"),
    _f("head", {"brain"}, {"haemorrhage"}, {"left"}, True, "CT"),
    _f("abdomen", {"abdomen", "liver"}, set(), set(), False, "CT"),
    _f(None, set(), {"fracture"}, set(), None, None),
]
PREDS = [
    _f("chest", {"chest"}, {"nodule", "effusion"}, {"right"}, True, "CT"),
    _f("abdomen", {"liver"}, set(), set(), False, "CT"),
    _f("abdomen", {"abdomen", "liver"}, {"lesion"}, {"left"}, True, "MRI"),
    _f(None, set(), {"fracture"}, {"left"}, True, "CT"),
]


def test_score_findings_hand_computed() -> None:
    s = score_findings(PREDS, REFS)
    assert s["n"] == 4
    # body part: chest=chest, abdomen!=head, abdomen=abdomen; sample 4 has none in its reference.
    assert s["region_acc"] == pytest.approx(2 / 3)
    # Jaccard: {chest} vs {chest, lung} 1/2, {liver} vs {brain} 0, equal sets 1; sample 4 skipped.
    assert s["region_overlap"] == pytest.approx(0.5)
    # tp/fp/fn per sample: (1,1,0) (0,0,1) (0,1,0) (1,0,0) -> totals tp 2, fp 2, fn 1.
    assert s["abnormality_precision"] == pytest.approx(2 / 4)
    assert s["abnormality_recall"] == pytest.approx(2 / 3)
    assert s["abnormality_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert s["hallucination_rate"] == pytest.approx(2 / 4)
    assert s["omission_rate"] == pytest.approx(1 / 3)
    # laterality over references with a side (samples 1, 2): right=right, {} != {left}.
    assert s["laterality_acc"] == pytest.approx(1 / 2)
    # abnormal over references stating it (1-3): agree, disagree, disagree.
    assert s["abnormal_acc"] == pytest.approx(1 / 3)
    assert s["modality_acc"] == pytest.approx(2 / 3)
    ps = s["per_sample"]
    np.testing.assert_array_equal(ps["tp"], [1, 0, 0, 1])
    np.testing.assert_array_equal(ps["fp"], [1, 0, 1, 0])
    np.testing.assert_array_equal(ps["fn"], [0, 1, 0, 0])
    assert math.isnan(ps["region"][3]) and math.isnan(ps["laterality"][2])


def test_score_findings_edge_cases() -> None:
    none = _f("chest", {"chest"}, set(), set(), False, "CT")
    s = score_findings([none, none], [none, none])
    assert s["region_acc"] == 1.0 and s["abnormal_acc"] == 1.0
    for key in ("abnormality_f1", "hallucination_rate", "omission_rate", "laterality_acc"):
        assert math.isnan(s[key]), key
    empty = score_findings([], [])
    assert empty["n"] == 0 and math.isnan(empty["region_acc"])
    with pytest.raises(ValueError):
        score_findings([none], [])


def test_findings_intervals_cover_the_scores() -> None:
    s = score_findings(PREDS * 30, REFS * 30)
    intervals = findings_intervals(s, n_resamples=300, seed=1)
    for key, (low, high) in intervals.items():
        assert low <= s[key] + 1e-9 and s[key] - 1e-9 <= high, key
        assert high - low < 0.5, key
    assert intervals == findings_intervals(s, n_resamples=300, seed=1)
