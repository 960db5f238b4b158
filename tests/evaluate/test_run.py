"""ctscribe evaluate end to end, and the scoring and report steps on hand-made predictions."""

import json
import shutil
import subprocess
import sys

import pytest

from ctscribe.ct.images import ImageOptions
from ctscribe.evaluate.report import build_report, comparison_rows
from ctscribe.evaluate.scores import read_predictions, score_system
from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.generate.engine import ImagePathMixin
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.run_folder import read_evaluation, write_log

REFERENCE = "The image is a CT scan of the chest. A nodule is located in the left lung."


def _record(text: str, reference: str = REFERENCE, **extra) -> dict:
    return {"input": "x.png", "slice": None, "status": "ok", "text": text, "reference": reference, **extra}


def test_scores_count_failures_and_leave_them_out_of_the_metrics():
    records = [
        _record(REFERENCE),
        _record("The image is a CT scan of the chest. A nodule is located in the right lung."),
        {"input": "bad.png", "slice": None, "status": "error", "error": "cannot decode image"},
    ]
    metrics = score_system(records, seed=1).block
    assert metrics["n"] == 2 and metrics["failed"] == 1
    assert metrics["findings"]["region_acc"] == 1.0
    assert metrics["findings"]["abnormality_f1"] == 1.0
    assert metrics["findings"]["laterality_acc"] == 0.5
    low, high = metrics["findings"]["ci95"]["laterality_acc"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert 0 < metrics["bleu4"] < 1 and metrics["ci95"]["bleu4"][0] <= metrics["bleu4"]
    assert metrics["findings_sentence"]["n"] == 2
    assert metrics["findings_sentence"]["rouge_l"] < metrics["rouge_l"]  # the shared template is gone
    json.dumps(metrics, allow_nan=False)  # no NaN reaches metrics.json


def test_per_region_breakdown_needs_enough_samples():
    head = "The image is a CT scan of the head. There is haemorrhage in the left hemisphere."
    records = [_record(head, head)] * 3 + [_record(REFERENCE)]
    assert set(score_system(records).block["per_region"]) == {"head"}


def test_the_report_shows_the_numbers_of_metrics_json(tmp_path):
    records = [_record(REFERENCE, id="a"), _record("CT of the head. No abnormality.", id="b")]
    baseline = [_record("Nothing useful.", id="a"), _record("Nothing.", id="b")]
    metrics = {"model": "m", "data": "test.json", **score_system(records).block}
    metrics["baseline"] = {"model": "base", **score_system(baseline).block}
    build_report(tmp_path, metrics, records, baseline, None, examples=5)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    report = (tmp_path / "report.md").read_text()
    for label, model, base, _ in comparison_rows(metrics):
        assert f"| {label} | {model} | {base} |" in report
    assert "not a diagnosis" in report
    gallery = (tmp_path / "gallery.html").read_text()
    assert gallery.count("<tr>") == 3 and "Nothing useful." in gallery and "not a diagnosis" in gallery
    assert "missed: nodule" in gallery  # the baseline's missing finding is flagged
    assert (tmp_path / "metrics.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_shows_the_trained_model_beats_its_untrained_base(
    trained_run, tiny_model_dir, learning_data, tmp_path
):
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "ctscribe", "evaluate",
        "--model", str(trained_run / "model"), "--baseline", str(tiny_model_dir),
        "--data", str(learning_data / "test.json"), "--out", str(out), "--run-dir", str(trained_run),
        "--max-pixels", str(LEARNING_PIXELS), "--max-new-tokens", "24", "--batch-size", "16",
        "--image-swap", "any",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    trained, untrained = metrics["findings"]["region_acc"], metrics["baseline"]["findings"]["region_acc"]
    assert metrics["n"] >= 20 and metrics["baseline"]["n"] == metrics["n"]
    assert trained >= 0.9 and untrained <= 0.3, (trained, untrained)
    assert (
        metrics["findings"]["ci95"]["region_acc"][0]
        > metrics["baseline"]["findings"]["ci95"]["region_acc"][1]
    )
    # The gain over the base is no noise: paired permutation tests on the same test images.
    comparison = metrics["comparison"]
    assert comparison["n"] == metrics["n"]
    for result in (comparison["findings"]["region_acc"], comparison["rouge_l"]):
        assert result["difference"] > 0 and result["ci"][0] > 0 and result["p_value"] < 0.05, result
    # It reads the image: shown another record's image, its region accuracy drops significantly.
    drop = metrics["image_swap"]["drop"]["findings"]["region_acc"]
    assert metrics["image_swap"]["swapped"] == metrics["n"]
    assert drop["difference"] > 0.3 and drop["p_value"] < 0.05, drop
    report = (out / "report.md").read_text()
    assert f"{trained:.3f}" in report and f"{untrained:.3f}" in report
    assert "## Image reliance" in report
    for name in ("metrics.png", "regions.png", "loss.png", "gallery.html"):
        assert (out / name).is_file(), name
    assert read_evaluation(trained_run) == metrics  # kept in the run folder for the model card

    # a killed evaluation continues: drop the last records and run again
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:30])
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(read_predictions(out / "predictions.jsonl")) == len(lines)
    assert json.loads((out / "metrics.json").read_text())["findings"] == metrics["findings"]


class _Answers(ImagePathMixin):
    """A stand-in engine: "CT of the chest." for descriptions, "Yes." to every follow-up."""

    name = "stand-in"
    image_options = ImageOptions(max_pixels=LEARNING_PIXELS)
    grid = DEFAULT_FAMILY.grid

    def generate(self, requests):
        from ctscribe.generate.engine import GenerationResult

        return [
            GenerationResult("Yes." if len(r.messages) > 1 else "CT of the chest.", 5, 3, "stop", 0.0)
            for r in requests
        ]


def test_a_dialogue_split_adds_closed_accuracy_and_open_recall_to_the_report(tmp_path, monkeypatch):
    from PIL import Image
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from ctscribe.evaluate.run import run_evaluation
    from ctscribe.prepare.records import sft_record

    records = []
    for index, caption in enumerate(
        ["CT of the chest. No lesion is seen.", "CT of the head. No lesion is seen."]
    ):
        Image.new("L", (64, 64), 30).save(tmp_path / f"{index}.png")
        records.append(sft_record(f"r{index}", f"{index}.png", caption, "test", dialogue=True))
    (tmp_path / "test.json").write_text(json.dumps(records))
    out = tmp_path / "report"
    jvm_starts = []
    tokenize = PTBTokenizer.tokenize
    monkeypatch.setattr(PTBTokenizer, "tokenize", lambda self, c: jvm_starts.append(1) or tokenize(self, c))
    metrics = run_evaluation(_Answers, tmp_path / "test.json", out, make_baseline=_Answers, with_meteor=False)
    # Model and baseline, descriptions and findings sentences: one PTB tokeniser run for all of them.
    java = shutil.which("java") is not None
    assert len(jvm_starts) == java
    assert (
        metrics["cider_tokenizer"]
        == metrics["baseline"]["cider_tokenizer"]
        == ("ptb" if java else "ctscribe")
    )
    rows = read_predictions(out / "dialogue_predictions.jsonl")
    closed = [t for row in rows for t in row["turns"] if t["kind"] == "closed"]
    expected = sum(t["expected"] == "yes" for t in closed) / len(closed)  # "Yes." to all: the yes share
    assert metrics["dialogue"]["closed_acc"] == pytest.approx(expected)
    assert metrics["dialogue"]["closed_n"] == len(closed) > 0
    # "Yes." names none of the open answers' key terms (CT, the region, "no lesion")
    assert metrics["dialogue"]["open_recall"] == 0.0 and metrics["dialogue"]["open_n"] == 4
    report = (out / "report.md").read_text()
    assert "| closed-question accuracy |" in report and "| open-question recall |" in report


def test_evaluate_with_a_run_dir_keeps_the_results_where_the_model_card_reads_them(tmp_path):
    from PIL import Image

    from ctscribe.evaluate.run import run_evaluation
    from ctscribe.export import ExportCheck, model_card
    from ctscribe.prepare.records import sft_record

    Image.new("L", (64, 64), 30).save(tmp_path / "0.png")
    record = sft_record("r0", "0.png", "CT of the chest. No lesion is seen.", "test")
    (tmp_path / "test.json").write_text(json.dumps([record]))
    run = tmp_path / "run"
    write_log(run / "train_log.jsonl", [{"step": 1, "loss": 2.0}])
    card = model_card(
        DEFAULT_FAMILY, "base", run / "adapter", "bf16", ExportCheck(adapter_effect=0.1, merge_error=0.0)
    )
    assert "evaluation:" not in card and "ctscribe evaluate --run-dir" in card

    metrics = run_evaluation(
        _Answers, tmp_path / "test.json", tmp_path / "report", run_dir=run, with_meteor=False
    )
    assert json.loads((run / "eval" / "metrics.json").read_text()) == metrics
    assert (tmp_path / "report" / "loss.png").is_file()
    card = model_card(
        DEFAULT_FAMILY, "base", run / "adapter", "bf16", ExportCheck(adapter_effect=0.1, merge_error=0.0)
    )
    assert f"- evaluation: n 1, bleu4 {metrics['bleu4']}, rouge_l {metrics['rouge_l']}" in card
