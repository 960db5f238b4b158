"""Study evaluation: matching findings to truth lesions, the metrics, and the whole run on the phantom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctscribe.evaluate.study import STUDY_METRICS_JSON, evaluate_studies, match, pixel_iou, series_columns
from ctscribe.fixtures.phantom_series import build_phantom_series
from support.study_reader import PhantomReaderEngine

PIXELS = 64 * 28 * 28


def _finding(slices, key_slice, box=None, region="chest", abnormality="nodule", side="right") -> dict:
    return {
        "region": region,
        "abnormality": abnormality,
        "side": side,
        "slices": slices,
        "key_slice": key_slice,
        "box": box,
    }


def _lesion(slices, boxes=None, region="chest", abnormality="nodule", side="right") -> dict:
    return {
        "region": region,
        "abnormality": abnormality,
        "side": side,
        "slices": slices,
        "boxes": boxes or {},
    }


def test_a_finding_matches_only_with_region_abnormality_side_and_overlapping_slices() -> None:
    lesion = _lesion([10, 14])
    assert match([_finding([12, 16], 13)], [lesion]) == [(0, 0)]
    assert match([_finding([15, 18], 16)], [lesion]) == []  # no overlap
    assert match([_finding([10, 14], 12, side="left")], [lesion]) == []
    assert match([_finding([10, 14], 12, region="abdomen")], [lesion]) == []
    assert match([_finding([10, 14], 12, abnormality="cyst")], [lesion]) == []


def test_matching_is_one_to_one_by_largest_overlap() -> None:
    findings = [_finding([8, 10], 9), _finding([11, 20], 15)]
    assert match(findings, [_lesion([10, 14])]) == [(1, 0)]
    columns = series_columns(findings, [_lesion([10, 14])])
    assert columns["recall"] == [1.0] and columns["precision"] == [0.0, 1.0]
    assert columns["key_slice_distance"] == [1.0]  # 15 is one slice past 14


def test_key_slice_iou_is_on_the_key_slice_and_zero_outside_the_lesion() -> None:
    boxes = {"12": [10, 10, 19, 19]}
    inside = series_columns([_finding([10, 14], 12, [15, 10, 24, 19])], [_lesion([10, 14], boxes)])
    assert inside["key_slice_iou"] == [pytest.approx(50 / 150)]
    no_truth_box = series_columns([_finding([10, 14], 13, [10, 10, 19, 19])], [_lesion([10, 14], boxes)])
    assert no_truth_box["key_slice_iou"] == [0.0]
    assert pixel_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0


class _Blind(PhantomReaderEngine):
    """States nothing: what a model that finds nothing scores."""

    name = "blind"

    def generate(self, requests):
        return [
            result.__class__("CT of the chest.", 1, 1, "stop", 0.0) for result in super().generate(requests)
        ]


def test_the_stand_in_reaches_the_truth_and_a_blind_baseline_does_not(tmp_path: Path) -> None:
    truth = build_phantom_series(tmp_path / "series", slices=24)
    metrics = evaluate_studies(
        lambda: PhantomReaderEngine(PIXELS),
        truth,
        tmp_path / "out",
        prompt="Describe.",
        make_baseline=lambda: _Blind(PIXELS),
    )
    model, baseline = metrics["model"], metrics["baseline"]
    assert model["recall"] >= 0.9 and model["precision"] >= 0.9
    assert model["key_slice_distance"] == 0 and model["key_slice_iou"] >= 0.8
    low, high = model["ci95"]["recall"]
    assert low <= model["recall"] <= high
    assert baseline["recall"] == 0 and baseline["precision"] is None  # nothing predicted
    assert metrics["series"] == ["dicom/series-1", "nifti/volume-2.nii.gz"]
    assert json.loads((tmp_path / "out" / STUDY_METRICS_JSON).read_text()) == metrics
