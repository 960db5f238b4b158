"""Paired significance: identical systems give p = 1 and 0; a real gap is significant; corpus metrics
are recomputed from swapped sufficient statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctscribe.evaluate.bootstrap import Columns
from ctscribe.evaluate.scores import compare_systems, score_system
from ctscribe.evaluate.significance import paired_difference
from ctscribe.evaluate.text_metrics import bleu4, bleu_from_stats

CAPTIONS = [
    "The image is a CT scan of the chest. A nodule is located in the left lung.",
    "The image is a CT scan of the head. There is haemorrhage in the right hemisphere.",
    "The image is a CT scan of the abdomen. No abnormality is seen.",
    "The image is a CT scan of the pelvis. A mass is present on the left side.",
]


def _records(texts: list[str], references: list[str]) -> list[dict]:
    return [
        {"input": f"{i}.png", "slice": None, "id": f"r{i}", "status": "ok", "text": t, "reference": r}
        for i, (t, r) in enumerate(zip(texts, references, strict=True))
    ]


def test_the_same_predictions_compared_with_themselves_give_p_1_and_no_difference():
    references = CAPTIONS * 5
    texts = [CAPTIONS[(i + 1) % 4] if i % 3 else CAPTIONS[i % 4] for i in range(len(references))]
    scored = score_system(_records(texts, references))
    comparison = compare_systems(scored, scored)
    assert comparison["n"] == 20
    results = [comparison[name] for name in ("bleu4", "rouge_l", "cider")] + [
        comparison["findings"][name] for name in ("region_acc", "abnormality_f1", "hallucination_rate")
    ]
    for result in results:
        assert result == {"difference": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    json.dumps(comparison, allow_nan=False)


def test_a_real_gap_is_significant_and_the_difference_is_a_minus_b():
    references = CAPTIONS * 6
    right = _records(references, references)
    wrong = _records([CAPTIONS[(i + 2) % 4] for i in range(len(references))], references)
    a, b = score_system(right), score_system(wrong)
    comparison = compare_systems(a, b)
    region = comparison["findings"]["region_acc"]
    assert region["difference"] == pytest.approx(1.0) and region["p_value"] < 0.001
    assert region["ci"] == [1.0, 1.0]
    rouge = comparison["rouge_l"]
    assert rouge["difference"] == pytest.approx(a.block["rouge_l"] - b.block["rouge_l"], abs=1e-6)
    assert rouge["ci"][0] > 0 and rouge["p_value"] < 0.001
    backwards = compare_systems(b, a)["findings"]["region_acc"]
    assert backwards["difference"] == pytest.approx(-1.0) and backwards["p_value"] < 0.001


def test_records_are_paired_by_id_not_by_position():
    references = CAPTIONS * 3
    records = _records(references, references)
    scored = score_system(records)
    shuffled = score_system(list(reversed(records)))  # the same outputs, in another order
    comparison = compare_systems(scored, shuffled)
    assert comparison["n"] == 12 and comparison["findings"]["region_acc"]["p_value"] == 1.0
    assert compare_systems(scored, score_system(records[:5]))["n"] == 5  # only the samples both scored


def test_corpus_bleu_is_recomputed_from_swapped_statistics():
    """A permutation swaps whole rows of sufficient statistics: the null distribution of a corpus
    metric is then its value on mixed corpora, which a test on sentence BLEU would not give."""
    references = [c for c in CAPTIONS for _ in range(4)]
    good = bleu4(references, references).columns()
    short = bleu4([r.split(".")[0] + "." for r in references], references).columns()
    result = paired_difference(good, short, permutations=999)
    # Corpus BLEU of the short outputs carries a brevity penalty that sentence BLEU averages differ from.
    assert result["difference"] == pytest.approx(
        1.0 - float(bleu_from_stats(short.values.sum(0))[0]), abs=1e-6
    )
    assert result["p_value"] < 0.01 and result["ci"][0] > 0


def test_a_metric_nobody_can_be_scored_on_is_null():
    empty = Columns.of(np.full(6, np.nan))
    assert paired_difference(empty, empty) == {"difference": None, "ci": [None, None], "p_value": None}


def _write_jsonl(path, records: list[dict]) -> None:
    """predict's format: no reference (compare takes it from the split)."""
    lines = [json.dumps({k: v for k, v in r.items() if k != "reference"}) for r in records]
    path.write_text("".join(f"{line}\n" for line in lines))


def test_compare_scores_two_predictions_files_against_the_split_by_id(tmp_path):
    from typer.testing import CliRunner

    from ctscribe.cli import app
    from ctscribe.prepare.records import sft_record

    references = CAPTIONS * 3
    split = [sft_record(f"r{i}", f"{i}.png", caption, "test") for i, caption in enumerate(references)]
    (tmp_path / "test.json").write_text(json.dumps(split))
    right = _records(references, references)
    wrong = _records([CAPTIONS[(i + 1) % 4] for i in range(len(references))], references)
    stray = {**right[0], "id": "not-in-split"}
    _write_jsonl(tmp_path / "a.jsonl", [*right, stray])
    _write_jsonl(tmp_path / "b.jsonl", list(reversed(wrong)))  # paired by id, not by line
    data = ["--data", str(tmp_path / "test.json")]

    runner = CliRunner()
    itself = ["evaluate", "--compare", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl"), *data]
    result = runner.invoke(app, [*itself, "--out", str(tmp_path / "same")])
    assert result.exit_code == 0, result.output
    same = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert same["comparison"]["n"] == 12
    assert same["skipped"] == {"a.jsonl: id not in the split": 2}
    nothing = {"difference": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    assert same["comparison"]["findings"]["region_acc"] == nothing

    args = ["evaluate", "--compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), *data]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ab")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ab" / "metrics.json").read_text())
    region = metrics["comparison"]["findings"]["region_acc"]
    assert metrics["findings"]["region_acc"] == 1.0 and metrics["baseline"]["findings"]["region_acc"] == 0.0
    assert region["difference"] == 1.0 and region["p_value"] < 0.01
    shown = f"+1.000 [+1.000, +1.000], p={region['p_value']:.4f}"
    assert shown in result.output and shown in (tmp_path / "ab" / "report.md").read_text()

    both = runner.invoke(app, [*args, "--model", "m", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "either --model or --compare" in both.output
