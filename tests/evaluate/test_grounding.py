"""Box IoU in evaluate: boxes scored on their own, words scored without the boxes' markup."""

import base64
import io
import json

import pytest
from PIL import Image

from ctscribe.conversation.boxes import GridBox, format_box
from ctscribe.ct.images import ImageOptions
from ctscribe.evaluate.grounding import first_box, score_boxes
from ctscribe.evaluate.report import BOX_COLOURS, build_report, comparison_rows
from ctscribe.evaluate.scores import score_system
from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.generate.engine import GenerationResult, ImagePathMixin
from ctscribe.models import DEFAULT_FAMILY

BOX = GridBox(100, 100, 500, 500)


def caption(box: GridBox | None) -> str:
    """A MedTrinity-like caption, grounded by ``box`` after its region-of-interest phrase."""
    where = format_box(box, "The region of interest") if box else "The region of interest"
    return (
        "The image is a non-contrast CT scan of the brain, showing the cerebral hemispheres. "
        f"{where}, located centrally, exhibits increased density, indicative of an intracranial hemorrhage."
    )


def test_iou_is_counted_over_the_samples_whose_reference_has_a_box():
    predictions = [
        caption(BOX),  # exact: IoU 1
        caption(GridBox(300, 100, 700, 500)),  # half the width overlaps: IoU 1/3
        caption(None),  # the same words without a box: unparseable, IoU 0
        caption(GridBox(0, 0, 10, 10)),  # its reference has no box: not counted
    ]
    references = [caption(BOX)] * 3 + [caption(None)]
    block = score_boxes(predictions, references, seed=0)
    assert block["n"] == 3 and block["without_reference_box"] == 1 and block["boxed_without_reference"] == 1
    assert block["mean_iou"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-6)
    assert block["iou50"] == pytest.approx(1 / 3, abs=1e-6)
    assert block["parseable"] == pytest.approx(2 / 3, abs=1e-6)
    for name in ("mean_iou", "iou50", "parseable"):
        low, high = block["ci95"][name]
        assert 0.0 <= low <= block[name] <= high <= 1.0


def test_no_reference_box_means_no_iou_and_a_box_decoded_without_its_markers_is_no_box():
    block = score_boxes([caption(BOX)], [caption(None)])
    assert block["n"] == 0 and block["mean_iou"] is None and block["ci95"] == {}
    assert first_box("The region of interest(100,100),(500,500), located centrally") is None


def test_words_are_scored_without_the_markup_and_the_box_apart():
    """The right words with the wrong box: perfect text metrics and findings, box IoU 0."""
    records = [
        {
            "input": "x.png",
            "status": "ok",
            "text": caption(GridBox(600, 600, 900, 900)),
            "reference": caption(BOX),
        }
    ] * 2
    metrics = score_system(records).block
    assert metrics["bleu4"] == pytest.approx(1.0) and metrics["rouge_l"] == pytest.approx(1.0)
    assert metrics["findings"]["abnormality_f1"] == 1.0
    assert metrics["boxes"]["mean_iou"] == 0.0 and metrics["boxes"]["parseable"] == 1.0
    # The control: with the markup left in, the same records would not score BLEU 1.
    from ctscribe.evaluate.text_metrics import text_metrics

    raw = text_metrics([r["text"] for r in records], [r["reference"] for r in records], with_meteor=False)
    assert raw["bleu4"].score < 0.95


def test_the_models_own_words_are_scored_where_predict_keeps_them_apart():
    """predict may write ``text`` for readers ("[box 1]" in place of the markup) and ``raw_text`` as
    the model wrote it: the box is read from ``raw_text``."""
    record = {
        "input": "x.png",
        "status": "ok",
        "text": "The region of interest [box 1], located centrally.",
        "raw_text": caption(BOX),
        "reference": caption(BOX),
    }
    metrics = score_system([record]).block
    assert metrics["boxes"]["mean_iou"] == 1.0 and metrics["bleu4"] == pytest.approx(1.0)


def _pixels(gallery: str) -> Image.Image:
    data = gallery.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_the_report_and_the_gallery_show_the_boxes(tmp_path):
    image = tmp_path / "slice.png"
    Image.new("RGB", (100, 100)).save(image)
    model = {"input": str(image), "id": "a", "status": "ok", "text": caption(GridBox(600, 600, 900, 900))}
    base = {"input": str(image), "id": "a", "status": "ok", "text": caption(None)}
    records, baseline = [{**model, "reference": caption(BOX)}], [{**base, "reference": caption(BOX)}]
    metrics = {"model": "m", "data": "test.json", **score_system(records).block}
    metrics["baseline"] = {"model": "base", **score_system(baseline).block}
    out = tmp_path / "report"
    out.mkdir()
    build_report(out, metrics, records, baseline, None, examples=5)
    rows = {label: (value, other) for label, value, other, _ in comparison_rows(metrics)}
    assert rows["box IoU"][0].startswith("0.000") and rows["parseable box"] == (
        "1.000 [1.000, 1.000]",
        "0.000 [0.000, 0.000]",
    )
    assert "Box IoU counts the 1 samples whose reference has a box" in (out / "report.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["boxes"]["n"] == 1
    gallery = (out / "gallery.html").read_text()
    assert "box IoU 0.00" in gallery and "no parseable box" in gallery and "<|box_start|>" not in gallery
    # Grid -> pixels of the 100 x 100 image shown: the reference at 10..49, the model's at 60..89.
    thumbnail = _pixels(gallery)
    assert thumbnail.getpixel((10, 30)) == _rgb(BOX_COLOURS["reference"])
    assert thumbnail.getpixel((60, 75)) == _rgb(BOX_COLOURS["model"])
    assert thumbnail.getpixel((30, 30)) == (0, 0, 0)


class _Points(ImagePathMixin):
    """A stand-in engine that describes every image with the caption grounded by one fixed box."""

    name = "stand-in"
    image_options = ImageOptions(max_pixels=LEARNING_PIXELS)
    grid = DEFAULT_FAMILY.grid

    def generate(self, requests):
        text = caption(GridBox(100, 100, 500, 300))  # half of BOX: IoU 0.5
        return [GenerationResult(text, 5, 30, "stop", 0.0) for _ in requests]


def test_evaluate_reports_box_iou_from_the_generated_text(tmp_path):
    """A split whose answers hold boxes, through predict, scoring and the report."""
    from ctscribe.evaluate.run import run_evaluation

    records = []
    for index, box in enumerate((BOX, None)):
        Image.new("L", (64, 64), 30).save(tmp_path / f"{index}.png")
        messages = [
            {"role": "user", "content": "<image>Describe this CT image."},
            {"role": "assistant", "content": caption(box)},
        ]
        records.append({"id": f"r{index}", "messages": messages, "images": [f"{index}.png"]})
    (tmp_path / "test.json").write_text(json.dumps(records))
    metrics = run_evaluation(_Points, tmp_path / "test.json", tmp_path / "report", with_meteor=False)
    assert metrics["n"] == 2 and metrics["bleu4"] == pytest.approx(1.0)
    assert metrics["boxes"]["n"] == 1 and metrics["boxes"]["without_reference_box"] == 1
    assert metrics["boxes"]["mean_iou"] == pytest.approx(0.5) and metrics["boxes"]["iou50"] == 1.0
    assert "| box IoU | 0.500" in (tmp_path / "report" / "report.md").read_text()
