"""``ctscribe study`` and ``ctscribe evaluate --study`` from the command line, with the backend stubbed
by the phantom reader stand-in: only the commands' wiring and printing are under test here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ctscribe.cli as cli
from ctscribe.fixtures.phantom_series import build_phantom_series
from ctscribe.model_settings import ModelSettings, record_settings
from support.study_reader import PhantomReaderEngine

PIXELS = 64 * 28 * 28
runner = CliRunner()


@pytest.fixture()
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "processor_config.json").write_text("{}")
    record_settings(folder, ModelSettings(max_pixels=PIXELS))
    monkeypatch.setattr(
        cli,
        "_backend",
        lambda backend, model, adapter, settings, base_url=None: PhantomReaderEngine(settings.max_pixels),
    )
    return folder


def test_study_command_reports_each_series_and_writes_the_report(model: Path, tmp_path: Path) -> None:
    truth = build_phantom_series(tmp_path / "series", slices=24)
    out = tmp_path / "out"
    args = [
        "study",
        str(truth.parent / "mixed"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--window",
        "soft-tissue",
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    lesions = len(json.loads(truth.read_text())["series"]["dicom/series-1"]["lesions"])
    expected = (
        f"series 1 (mixed): 23 of 24 slices read, 1 skipped, {lesions} finding(s); order: instance number"
    )
    assert expected in result.output
    assert "series 2 (mixed): 1 of 1 slices read" in result.output
    assert {path.name for path in out.iterdir()} >= {"study.json", "report.md", "strip.png", "key-slices"}
    assert all(sentinel not in result.output for sentinel in json.loads(truth.read_text())["sentinels"])


def test_study_command_refuses_a_bad_slice_choice_and_an_input_without_series(
    model: Path, tmp_path: Path
) -> None:
    args = ["--model", str(model), "--out", str(tmp_path / "out")]
    result = runner.invoke(cli.app, ["study", str(tmp_path), *args, "--slices", "middle"])
    assert result.exit_code == 2 and "--slices" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli.app, ["study", str(tmp_path / "empty"), *args])
    assert result.exit_code == 1 and "no CT series" in result.output


def test_evaluate_study_flag_scores_the_truth_series(model: Path, tmp_path: Path) -> None:
    truth = build_phantom_series(tmp_path / "series", slices=24)
    args = [
        "evaluate",
        "--study",
        "--model",
        str(model),
        "--data",
        str(truth),
        "--out",
        str(tmp_path / "eval"),
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "recall" in result.output and "key_slice_iou" in result.output
    assert json.loads((tmp_path / "eval" / "study_metrics.json").read_text())["model"]["recall"] >= 0.9
