"""Image reliance: swapping each image for another record's costs a model that reads the image, and
costs nothing to one that writes the likely report whatever it is shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ctscribe.ct.images import ImageOptions
from ctscribe.evaluate.image_swap import write_swapped_split
from ctscribe.evaluate.run import run_evaluation
from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.generate.engine import GenerationResult, ImagePathMixin
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.prepare.records import sft_record

# The region each stand-in image shows, as the grey level of a disk on black.
GREYS = {"head": 80, "chest": 150, "abdomen": 230}


def _split(folder, per_region: int = 8) -> tuple:
    records = []
    for region, grey in GREYS.items():
        for k in range(per_region):
            image = Image.new("L", (96, 96), 0)
            ImageDraw.Draw(image).ellipse((20, 20, 76, 76), fill=grey)
            name = f"{region}{k}.png"
            image.save(folder / name)
            caption = f"CT of the {region}. No lesion is seen."
            records.append(sft_record(f"{region}{k}", name, caption, "test"))
    path = folder / "test.json"
    path.write_text(json.dumps(records))
    return path


class _Reader(ImagePathMixin):
    """Names the region the image's disk encodes: reads the pixels."""

    name = "reader"
    image_options = ImageOptions(max_pixels=LEARNING_PIXELS)
    grid = DEFAULT_FAMILY.grid

    def generate(self, requests):
        answers = []
        for request in requests:
            level = int(np.asarray(request.images[0].convert("L")).max())
            region = min(GREYS, key=lambda r: abs(GREYS[r] - level))
            answers.append(GenerationResult(f"CT of the {region}. No lesion is seen.", 5, 3, "stop", 0.0))
        return answers


class _Blind(_Reader):
    """Writes the likeliest report whatever the image: never looks at the pixels."""

    name = "pixel-blind"

    def generate(self, requests):
        return [GenerationResult("CT of the chest. No lesion is seen.", 5, 3, "stop", 0.0) for _ in requests]


def test_a_model_that_reads_the_image_loses_region_accuracy_and_a_pixel_blind_one_does_not(tmp_path):
    data = _split(tmp_path)
    reader = run_evaluation(_Reader, data, tmp_path / "reader", image_swap="any", with_meteor=False)
    drop = reader["image_swap"]["drop"]["findings"]["region_acc"]
    assert reader["findings"]["region_acc"] == 1.0 and reader["image_swap"]["swapped"] == 24
    assert drop["difference"] > 0.4 and drop["ci"][0] > 0 and drop["p_value"] < 0.01

    blind = run_evaluation(_Blind, data, tmp_path / "blind", image_swap="any", with_meteor=False)
    drop = blind["image_swap"]["drop"]["findings"]["region_acc"]
    assert blind["findings"]["region_acc"] == pytest.approx(1 / 3)
    assert drop == {"difference": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    report = (tmp_path / "reader" / "report.md").read_text()
    assert "## Image reliance" in report and "| region acc |" in report


def test_same_region_swaps_keep_the_region_so_a_region_reader_loses_nothing(tmp_path):
    data = _split(tmp_path)
    metrics = run_evaluation(_Reader, data, tmp_path / "out", image_swap="same-region", with_meteor=False)
    assert metrics["image_swap"]["drop"]["findings"]["region_acc"]["difference"] == 0.0
    swapped = json.loads((tmp_path / "out" / "swapped_test.json").read_text())
    for record in swapped:  # every image is another record's, of the reference's own region
        region = record["id"].rstrip("0123456789")
        assert f"{record['id']}.png" not in record["images"][0] and f"/{region}" in record["images"][0]


def test_records_that_cannot_be_swapped_are_counted_with_a_reason(tmp_path):
    data = _split(tmp_path, per_region=1)
    records = json.loads(data.read_text())
    records.append(sft_record("odd", "head0.png", "Nothing to say.", "test"))
    data.write_text(json.dumps(records))
    summary = write_swapped_split(data, tmp_path / "swapped.json", "same-region")
    assert summary["swapped"] == 0
    assert summary["skipped"] == {"reference names no body part": 1, "no other image to swap with": 3}
    with pytest.raises(ValueError, match="same-region"):
        write_swapped_split(data, tmp_path / "swapped.json", "nearby")
