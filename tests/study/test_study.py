"""``ctscribe study`` on the phantom series, read by the pointing stand-in (support.study_reader).

The stand-in is not a model: it boxes the bright spot and names region and side from the pixels, so
these tests check the study flow (reading, ordering, describing, grouping, key slices, boxes, report,
resume, de-identification), not any model's reading.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctscribe.ct.windows import apply_window
from ctscribe.evaluate.study import score_series
from ctscribe.fixtures.phantom_series import EMPTY_ENDS, build_phantom_series, draw_volume
from ctscribe.study.describe import NO_BODY, check_slices
from ctscribe.study.report import STRIP_PNG, STUDY_JSON
from ctscribe.study.run import NoSeriesError, run_study
from ctscribe.study.series import ORDER_FILE_NAME, ORDER_INSTANCE, ORDER_POSITION
from support.study_reader import PhantomReaderEngine

PIXELS = 64 * 28 * 28
WINDOW = "soft-tissue"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom-series")
    build_phantom_series(out, slices=24)
    return out


@pytest.fixture(scope="module")
def truth(phantom: Path) -> dict:
    return json.loads((phantom / "truth.json").read_text())


def _study(source: Path, out: Path, **options) -> dict:
    engine = PhantomReaderEngine(PIXELS)
    return run_study(engine, source, out, prompt="Describe.", window=WINDOW, show_progress=False, **options)


@pytest.mark.parametrize("name", ["dicom/series-1", "nifti/volume-2.nii.gz"])
def test_stand_in_finds_the_truth_findings_with_their_key_slices_and_boxes(
    phantom: Path, truth: dict, tmp_path: Path, name: str
) -> None:
    study = _study(phantom / name, tmp_path / "out")
    (series,) = study["series"]
    assert series["slices_read"] == 24 and series["skipped"] == []
    lesions = truth["series"][name]["lesions"]
    scores = score_series([(series["findings"], lesions)])
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.9
    assert scores["key_slice_distance"] == 0
    assert scores["key_slice_iou"] >= 0.8  # boxes come back in the slice's own pixels
    assert [entry["index"] for entry in series["slices"]] == list(range(24))


def test_a_messy_series_is_reported_apart_ordered_by_instance_and_skips_its_corrupt_slice(
    phantom: Path, truth: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    study = _study(phantom / "mixed", out)
    main, stray = sorted(study["series"], key=lambda entry: -entry["slice_count"])
    assert (main["slice_count"], stray["slice_count"]) == (24, 1)  # two series, apart
    assert main["order"] == ORDER_INSTANCE and stray["order"] == ORDER_POSITION
    ((corrupt_slice, reason),) = [(item["slice"], item["reason"]) for item in main["skipped"]]
    assert "decode" in reason and main["slices_read"] == 23
    assert corrupt_slice not in [entry["index"] for entry in main["slices"]]
    # the instance-number order is the true order: the findings still land on the truth's slices
    assert score_series([(main["findings"], truth["series"]["dicom/series-1"]["lesions"])])["recall"] >= 0.9
    written = b"".join(path.read_bytes() for path in out.rglob("*") if path.is_file())
    captured = capsys.readouterr()
    shown = (caplog.text + captured.out + captured.err).encode()
    assert "decode" in caplog.text  # the skip is logged ...
    for sentinel in truth["sentinels"]:  # ... and no identifier or UID anywhere
        assert sentinel.encode() not in written and sentinel.encode() not in shown
    assert all(len(entry["id"]) == 12 for entry in study["series"])


def test_a_zip_reads_as_its_folder_and_shows_no_temporary_path(phantom: Path, tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((phantom / "dicom" / "series-1").iterdir()):
            zipped.write(path, f"scan/{path.name}")
    from_zip = _study(archive, tmp_path / "zip")
    from_folder = _study(phantom / "dicom" / "series-1", tmp_path / "folder")
    assert from_zip["series"][0]["findings"] == from_folder["series"][0]["findings"]
    assert from_zip["series"][0]["source"] == "series.zip/scan"
    assert "ctscribe-study-" not in (tmp_path / "zip" / STUDY_JSON).read_text()


def test_body_slices_leave_out_the_air_beyond_the_body_with_a_reason(phantom: Path, tmp_path: Path) -> None:
    study = _study(phantom / "dicom" / "series-1", tmp_path / "out", slices="body")
    (series,) = study["series"]
    expected = [*range(EMPTY_ENDS), *range(24 - EMPTY_ENDS, 24)]
    assert [item["slice"] for item in series["skipped"]] == expected
    assert {item["reason"] for item in series["skipped"]} == {NO_BODY}
    assert series["slices_read"] == 24 - len(expected)
    every = _study(phantom / "dicom" / "series-1", tmp_path / "every", slices="every:3")
    assert [entry["index"] for entry in every["series"][0]["slices"]] == list(range(0, 24, 3))
    with pytest.raises(ValueError, match="more than the middle"):
        check_slices("middle")


class _Killed(RuntimeError):
    pass


class _CountingEngine(PhantomReaderEngine):
    """The stand-in, counting slices described, killed after ``kill_after`` batches."""

    def __init__(self, kill_after: int | None = None) -> None:
        super().__init__(PIXELS)
        self.described, self.batches, self.kill_after = 0, 0, kill_after

    def generate(self, requests):
        if self.kill_after is not None and self.batches == self.kill_after:
            raise _Killed
        self.batches += 1
        self.described += len(requests)
        return super().generate(requests)


def test_a_killed_study_resumes_with_only_the_missing_slices(phantom: Path, tmp_path: Path) -> None:
    source, out = phantom / "dicom" / "series-1", tmp_path / "out"
    options = {"prompt": "Describe.", "window": WINDOW, "batch_size": 5, "show_progress": False}
    with pytest.raises(_Killed):
        run_study(_CountingEngine(kill_after=2), source, out, **options)
    assert not (out / STUDY_JSON).exists()  # no half report
    resumed = _CountingEngine()
    study = run_study(resumed, source, out, **options)
    assert resumed.described == 24 - 10
    whole = run_study(_CountingEngine(), source, tmp_path / "whole", **options)
    for key in ("findings", "slices", "slices_read"):
        assert study["series"][0][key] == whole["series"][0][key]


def test_a_folder_of_slice_images_without_findings_still_gets_its_strip_plot(tmp_path: Path) -> None:
    volume, _ = draw_volume(5, 24)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index in (10, 11, 12):  # lesions flattened to soft tissue: nothing to find
        grey = apply_window(np.minimum(volume[index], 100), 400, 50)
        Image.fromarray(grey).save(folder / f"slice-{index:02d}.png")
    study = _study(folder, tmp_path / "out")
    (series,) = study["series"]
    assert series["kind"] == "images" and series["order"] == ORDER_FILE_NAME
    assert series["slices_read"] == 3 and series["findings"] == []
    assert Image.open(tmp_path / "out" / STRIP_PNG).size[0] > 0


def test_an_input_without_series_is_refused_with_each_files_reason(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a scan")
    with pytest.raises(NoSeriesError) as error:
        _study(tmp_path / "in", tmp_path / "out")
    assert error.value.skipped == [{"file": "in/notes.txt", "reason": "not a DICOM, NIfTI or image file"}]
    shutil.rmtree(tmp_path / "in")
