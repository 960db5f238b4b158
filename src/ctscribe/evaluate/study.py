"""Scoring study reports against a series' truth: are the findings found, placed and boxed right?

``ctscribe evaluate --study --data TRUTH`` takes the truth.json of ``ctscribe fixtures
phantom-series`` (per series, each lesion's region, abnormality, side, slice range and boxes), runs
``ctscribe study`` (:func:`ctscribe.study.run.run_study`) on each series it names, for the model and the
baseline, and scores each series' study findings:

- a predicted finding **matches** a truth lesion when region, abnormality and side agree and the slice
  ranges overlap; pairs are made one to one, the largest overlap first;
- ``recall``: share of truth lesions matched; ``precision``: share of predicted findings matched;
- ``key_slice_distance``: per match, slices from the key slice to the truth range (0 inside it);
- ``key_slice_iou``: per match, IoU of the key slice's box with the lesion's box on that slice (0 when
  the key slice is outside the lesion or has no box), in the key slice's pixels.

Each comes with a 95% percentile bootstrap interval (:mod:`ctscribe.evaluate.bootstrap`) over its own
units: truth lesions, predicted findings, matches. The series are read in the window the truth names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ctscribe.atomic import atomic_write_text
from ctscribe.evaluate.bootstrap import bootstrap_ci, json_number
from ctscribe.generate.engine import GenerationBackend
from ctscribe.generate.options import GenerateOptions
from ctscribe.study.run import run_study

STUDY_METRICS = ("recall", "precision", "key_slice_distance", "key_slice_iou")
STUDY_METRICS_JSON = "study_metrics.json"
_KEY = ("region", "abnormality", "side")


def pixel_iou(a: list[int], b: list[int]) -> float:
    """IoU of two inclusive pixel boxes ``[x0, y0, x1, y1]``."""
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0, width) * max(0, height)
    areas = [(box[2] - box[0] + 1) * (box[3] - box[1] + 1) for box in (a, b)]
    return inter / (sum(areas) - inter)


def _overlap(a: list[int], b: list[int]) -> int:
    return min(a[1], b[1]) - max(a[0], b[0]) + 1


def match(findings: list[dict], lesions: list[dict]) -> list[tuple[int, int]]:
    """(finding index, lesion index) pairs, one to one, the largest slice overlap first."""
    candidates = sorted(
        (
            (-_overlap(f["slices"], t["slices"]), i, j)
            for i, f in enumerate(findings)
            for j, t in enumerate(lesions)
            if all(f[k] == t[k] for k in _KEY) and _overlap(f["slices"], t["slices"]) > 0
        )
    )
    pairs, used_f, used_t = [], set(), set()
    for _, i, j in candidates:
        if i not in used_f and j not in used_t:
            pairs.append((i, j))
            used_f.add(i)
            used_t.add(j)
    return sorted(pairs)


def series_columns(findings: list[dict], lesions: list[dict]) -> dict[str, list[float]]:
    """Per-unit values of every metric for one series (see the module docstring)."""
    pairs = match(findings, lesions)
    matched_f, matched_t = {i for i, _ in pairs}, {j for _, j in pairs}
    distances, ious = [], []
    for i, j in pairs:
        key, (first, last) = findings[i]["key_slice"], lesions[j]["slices"]
        distances.append(float(max(0, first - key, key - last)))
        truth_box = lesions[j]["boxes"].get(str(key))
        box = findings[i]["box"]
        ious.append(pixel_iou(box, truth_box) if box is not None and truth_box is not None else 0.0)
    return {
        "recall": [float(j in matched_t) for j in range(len(lesions))],
        "precision": [float(i in matched_f) for i in range(len(findings))],
        "key_slice_distance": distances,
        "key_slice_iou": ious,
    }


def score_series(pairs: list[tuple[list[dict], list[dict]]], seed: int = 0) -> dict:
    """Metrics with intervals over several series' ``(predicted findings, truth lesions)``."""
    columns: dict[str, list[float]] = {name: [] for name in STUDY_METRICS}
    for findings, lesions in pairs:
        for name, values in series_columns(findings, lesions).items():
            columns[name] += values
    block: dict = {"n": {name: len(values) for name, values in columns.items()}, "ci95": {}}
    for name, values in columns.items():
        array = np.array(values, dtype=float)
        block[name] = json_number(float(array.mean())) if array.size else None
        block["ci95"][name] = [json_number(v) for v in bootstrap_ci(array, seed=seed)]
    return block


def _main_series(study: dict) -> dict:
    """The series a truth entry names: the input's longest (a stray slice must not stand in for it)."""
    return max(study["series"], key=lambda entry: entry["slice_count"])


def evaluate_studies(
    make_engine: Callable[[], GenerationBackend],
    truth_path: Path,
    out: Path,
    *,
    prompt: str,
    make_baseline: Callable[[], GenerationBackend] | None = None,
    batch_size: int = GenerateOptions.batch_size,
    max_new_tokens: int = GenerateOptions.max_new_tokens,
) -> dict:
    """Study reports of every truth series under ``out/model/`` (and ``out/baseline/``), scored; writes
    and returns study_metrics.json's content."""
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    root = truth_path.parent
    metrics: dict = {"truth": truth_path.name, "series": sorted(truth["series"]), "window": truth["window"]}
    systems = [("model", make_engine)] + ([("baseline", make_baseline)] if make_baseline else [])
    for label, make in systems:
        engine = make()
        pairs = []
        for name, entry in sorted(truth["series"].items()):
            study = run_study(
                engine,
                root / name,
                out / label / name.replace("/", "_"),
                prompt=prompt,
                window=truth["window"],
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
            )
            pairs.append((_main_series(study)["findings"], entry["lesions"]))
        metrics[label] = {"name": engine.name, **score_series(pairs)}
        del engine  # free its memory before the next model loads
    atomic_write_text(out / STUDY_METRICS_JSON, json.dumps(metrics, indent=1) + "\n")
    return metrics


def metric_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, model's value [interval], baseline's) for the terminal."""

    def shown(block: dict | None, name: str) -> str:
        if not block or block[name] is None:
            return "-"
        low, high = block["ci95"][name]
        return f"{block[name]:.3f} [{low:.3f}, {high:.3f}] n={block['n'][name]}"

    return [
        (name, shown(metrics["model"], name), shown(metrics.get("baseline"), name)) for name in STUDY_METRICS
    ]
