"""predict: records, resume, error records, CSV, privacy, and the CLI's exit status."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctscribe import CLINICAL_NOTICE
from ctscribe.fixtures.learning import LEARNING_PIXELS, clean_ct_rows
from ctscribe.generate.engine import TransformersEngine
from ctscribe.predict import load_done, predict, write_csv


@pytest.fixture(scope="module")
def engine(trained_run):
    return TransformersEngine(trained_run / "model", max_pixels=LEARNING_PIXELS)


@pytest.fixture
def images(tmp_path) -> list[Path]:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, (_, data) in enumerate(clean_ct_rows(20, seed=4)[:5]):
        path = folder / ("sub" if i % 2 else "") / f"{i:02d}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_each_image_gets_a_record_with_the_notice_in_its_own_field(engine, images, tmp_path):
    broken = tmp_path / "scans" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "preds.jsonl"
    summary = predict(engine, [tmp_path / "scans"], out, batch_size=3, show_progress=False)
    records = _records(out)
    assert summary.written == 5 and summary.failed == 1 and len(records) == 6
    ok = [r for r in records if r["status"] == "ok"]
    assert {Path(r["input"]).name for r in ok} == {p.name for p in images}
    for record in ok:
        assert record["text"].startswith("CT of the")
        assert record["notice"] == CLINICAL_NOTICE and CLINICAL_NOTICE not in record["text"]
        assert record["model"] and record["seconds"] >= 0 and record["prompt"]
    (error,) = [r for r in records if r["status"] == "error"]
    assert error["input"].endswith("broken.png") and "decode" in error["error"]
    assert error["notice"] == CLINICAL_NOTICE

    assert write_csv(out, tmp_path / "preds.csv") == 6
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert {row["notice"] for row in rows} == {CLINICAL_NOTICE}


@pytest.mark.slow
def test_a_rerun_skips_what_is_done_and_retries_torn_and_failed_lines(engine, images, tmp_path):
    out = tmp_path / "preds.jsonl"
    predict(engine, images[:3], out, show_progress=False)
    first = _records(out)
    # a kill mid-write leaves half a line; a failure from an earlier run is retried too
    torn = json.dumps(first[2])[:40]
    failed = json.dumps({"input": str(images[3]), "slice": None, "status": "error", "error": "x"})
    out.write_text("\n".join([json.dumps(first[0]), json.dumps(first[1]), failed, torn]))
    summary = predict(engine, images, out, show_progress=False)
    assert summary.skipped == 2 and summary.written == 3 and summary.failed == 0
    records = _records(out)
    assert len(records) == 5 and all(r["status"] == "ok" for r in records)
    assert sorted(r["input"] for r in records) == sorted(str(p) for p in images)
    assert records[2]["text"] == first[2]["text"]  # the same greedy answer as before the kill
    assert len(load_done(out)) == 5


def test_load_done_ignores_garbage(tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text('[1, 2]\n{"input": "a.png", "slice": 3, "status": "ok"}\n{"input": ')
    assert load_done(out) == {"a.png#3"}
    assert out.read_text().count("\n") == 1


@pytest.mark.slow
def test_the_cli_exit_status_says_whether_anything_succeeded(trained_run, images, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ctscribe", "predict", "--model", str(trained_run / "model")]
        return subprocess.run(
            [*command, "--max-pixels", str(LEARNING_PIXELS), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    missing = cli(str(tmp_path / "nope.png"), "--out", str(tmp_path / "a.jsonl"))
    assert missing.returncode == 1, missing.stderr
    assert _records(tmp_path / "a.jsonl")[0]["status"] == "error"

    mixed = [str(images[0]), str(tmp_path / "nope.png"), "--out", str(tmp_path / "b.jsonl")]
    done = cli(*mixed, "--csv", str(tmp_path / "b.csv"))
    assert done.returncode == 0, done.stderr
    assert "1 description(s)" in done.stdout and (tmp_path / "b.csv").is_file()
    assert cli(*mixed, "--strict").returncode == 1


@pytest.mark.slow
def test_no_dicom_identifier_reaches_the_outputs_or_the_logs(trained_run, tmp_path):
    from ctscribe.fixtures.dicom_samples import write_sentinel_dicom

    (tmp_path / "study").mkdir()
    secrets = write_sentinel_dicom(tmp_path / "study" / "good.dcm")
    secrets += write_sentinel_dicom(tmp_path / "broken.dcm", corrupt_pixels=True)
    out, table = tmp_path / "p.jsonl", tmp_path / "p.csv"
    inputs = [str(tmp_path / "study"), str(tmp_path / "broken.dcm")]
    model = ["--model", str(trained_run / "model"), "--max-pixels", str(LEARNING_PIXELS)]
    outputs = ["--out", str(out), "--csv", str(table), "--window", "auto"]
    command = [sys.executable, "-m", "ctscribe", "predict", *inputs, *model, *outputs]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = _records(out)
    assert [r["status"] for r in records] == ["ok", "error"]
    assert records[0]["window"].startswith("soft-tissue")  # CT_small has no lung: auto says why
    everything = out.read_text() + table.read_text() + done.stdout + done.stderr
    leaked = [secret for secret in set(secrets) if secret in everything]
    assert not leaked


def test_boxes_in_an_answer_become_fields_in_the_input_images_pixels(tmp_path):
    """With a stand-in engine that answers with a box around the bright spot of the image it is given
    (tests/support/pointing.py; no model writes boxes yet): the box comes back in the pixels of the
    file given, through the background crop and the resize, and the text reads without markup."""
    from PIL import Image, ImageDraw

    from support.pointing import BrightSpotEngine

    scan = Image.new("RGB", (420, 300))
    draw = ImageDraw.Draw(scan)
    draw.ellipse((120, 40, 400, 280), fill=(120, 120, 120))  # air on the left: the crop moves the frame
    spot = (230, 100, 259, 129)
    draw.rectangle(spot, fill=(255, 255, 255))
    scan.save(tmp_path / "scan.png")
    out = tmp_path / "preds.jsonl"
    predict(BrightSpotEngine(LEARNING_PIXELS), [tmp_path / "scan.png"], out, show_progress=False)
    (record,) = _records(out)
    assert record["text"] == "CT of the phantom. the bright spot [box 1] is dense."
    assert "<|box_start|>" in record["raw_text"] and record["notice"] == CLINICAL_NOTICE
    (box,) = record["boxes"]
    assert box["phrase"] == "the bright spot" and len(box["box_1000"]) == 4
    assert max(abs(a - b) for a, b in zip(box["box_pixels"], spot, strict=True)) <= 2, box
    assert write_csv(out, tmp_path / "preds.csv") == 1
    (row,) = csv.DictReader((tmp_path / "preds.csv").open())
    assert json.loads(row["boxes"]) == record["boxes"]
