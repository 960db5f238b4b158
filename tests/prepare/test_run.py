import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ctscribe.conversation.boxes import GRID, GridBox, parse_boxes, to_grid
from ctscribe.conversation.prompts import HELD_OUT, PROMPTS
from ctscribe.ct.images import ImageOptions, prepare_image, roi_in_model_frame
from ctscribe.fixtures.phantom import build_phantom, build_phantom_full, generate_rows, read_truth
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.prepare import run as prepare_module
from ctscribe.prepare.dialogue import QUESTIONS
from ctscribe.prepare.grounding import roi_sentence, unground
from ctscribe.prepare.run import FinalizeOptions, StageOptions, merge_shards, run_prepare

OUTPUTS = ("train.json", "val.json", "test.json", "dataset_info.json", "stats.json")
# Larger fractions than the defaults, so 100 rows give every split some rows.
FINAL = FinalizeOptions(val_fraction=0.15, test_fraction=0.15)
BOX_TOLERANCE = 0.03 * GRID  # a grounded box's corners within 3% of the image side of the truth's


def _prepare(source: Path | str, out: Path, **kwargs) -> dict:
    kwargs.setdefault("show_progress", False)
    return run_prepare(str(source), out, StageOptions(), FINAL, **kwargs)


def _outputs(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in OUTPUTS}


def _records(folder: Path) -> dict[str, list[dict]]:
    return {split: json.loads((folder / f"{split}.json").read_text()) for split in ("train", "val", "test")}


def _all_records(folder: Path) -> list[dict]:
    return [record for records in _records(folder).values() for record in records]


def _boxes(record: dict) -> list:
    """The boxes in a record's description (its first answer)."""
    return parse_boxes(record["messages"][1]["content"])


def _roi_turns(record: dict) -> list[tuple[str, str]]:
    """(question, answer) of each "Where is the region of interest?" follow-up of a record."""
    messages = record["messages"]
    return [
        (messages[2 * k]["content"], messages[2 * k + 1]["content"])
        for k, meta in enumerate(record.get("dialogue", []))
        if meta["topic"] == "roi_box"
    ]


def _near(box: GridBox, truth: GridBox) -> bool:
    return max(abs(a - b) for a, b in zip(box.as_list(), truth.as_list(), strict=True)) <= BOX_TOLERANCE


@pytest.fixture(scope="module")
def phantom_units(tmp_path_factory) -> Path:
    """120 phantom rows in row groups of 20: six units to checkpoint, resume and shard."""
    return build_phantom(tmp_path_factory.mktemp("units") / "set", rows=120, seed=5, rows_per_group=20)


@pytest.fixture(scope="module")
def prepared(phantom_units, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "ct"
    _prepare(phantom_units, out)
    return out


def test_writes_llamafactory_layout(prepared):
    for name in (*OUTPUTS, "README.md"):
        assert (prepared / name).is_file(), name
    info = json.loads((prepared / "dataset_info.json").read_text())
    assert set(info) == {"mllm_med", "mllm_med_val", "mllm_med_test"}
    assert info["mllm_med"]["file_name"] == "train.json"
    assert info["mllm_med"]["formatting"] == "sharegpt"
    assert info["mllm_med"]["columns"] == {"messages": "messages", "images": "images"}
    assert not list(prepared.glob("*.partial")) and not list(prepared.rglob(".*.partial"))


def test_every_row_is_kept_or_skipped_for_its_one_reason(prepared, phantom_units):
    stats = json.loads((prepared / "stats.json").read_text())
    truth = read_truth(phantom_units)
    assert stats["read"] == len(truth) == stats["kept"] + sum(stats["skipped"].values())
    expected = Counter()
    for t in truth:
        if t.empty_caption:
            expected["empty_caption"] += 1
        elif t.modality != "CT":
            expected["not_ct"] += 1
        elif t.corrupt:
            expected["bad_image"] += 1
        elif t.duplicate_of:
            expected["duplicate"] += 1
    assert stats["skipped"] == {r: expected[r] for r in ("empty_caption", "not_ct", "bad_image", "duplicate")}
    kept_ids = {r["id"] for records in _records(prepared).values() for r in records}
    assert kept_ids == {
        t.id for t in truth if t.modality == "CT" and not (t.empty_caption or t.corrupt or t.duplicate_of)
    }
    assert sum(stats["splits"].values()) == stats["kept"]
    assert all(n > 0 for n in stats["splits"].values())
    assert stats["modalities_seen"]["MRI"] == sum(t.modality == "MRI" for t in truth)


def test_records_are_sharegpt_with_images_on_disk(prepared, phantom_units):
    truth = {t.id: t for t in read_truth(phantom_units)}
    stats = json.loads((prepared / "stats.json").read_text())
    roi, tokens = 0, []
    for records in _records(prepared).values():
        for record in records:
            user, assistant = record["messages"]
            assert user["role"] == "user" and user["content"].startswith("<image>")
            assert user["content"].count("<image>") == 1
            assert assistant["role"] == "assistant" and "computed tomography" in assistant["content"]
            assert len(record["images"]) == 1
            with Image.open(prepared / record["images"][0]) as image:
                width, height = image.size
            assert width % 28 == 0 and height % 28 == 0 and width * height <= 512 * 512
            tokens.append(width * height // 784)
            roi += truth[record["id"]].roi_box is not None
    assert stats["roi_box_found"] == roi > 0
    assert stats["mean_image_tokens"] == pytest.approx(sum(tokens) / len(tokens), abs=0.01)
    # Duplicates' image files are gone; nothing but kept images remains.
    on_disk = {str(p.relative_to(prepared)) for p in (prepared / "images").rglob("*.png")}
    assert on_disk == {r["images"][0] for records in _records(prepared).values() for r in records}


def test_test_split_uses_only_held_out_prompts(prepared):
    held_out = {p for pool in PROMPTS.values() for p in pool[-HELD_OUT:]}
    records = _records(prepared)
    for split, rows in records.items():
        for record in rows:
            prompt = record["messages"][0]["content"].removeprefix("<image>")
            assert (prompt in held_out) == (split == "test"), (split, prompt)


def test_dialogue_adds_follow_ups_and_changes_no_split_or_description(prepared, tmp_path):
    out = tmp_path / "dialogue"
    shutil.copytree(prepared, out)
    stats = prepare_module.finalize(out, dataclasses.replace(FINAL, dialogue=True))
    plain, dialogue = _records(prepared), _records(out)
    for split, rows in plain.items():
        assert [r["id"] for r in dialogue[split]] == [r["id"] for r in rows]
        for before, after in zip(rows, dialogue[split], strict=True):
            assert after["messages"][:2] == before["messages"] and after["images"] == before["images"]
            assert len(after["messages"]) == 2 * len(after["dialogue"]) >= 8
            roles = [m["role"] for m in after["messages"]]
            assert roles == ["user", "assistant"] * len(after["dialogue"])
            assert sum("<image>" in m["content"] for m in after["messages"]) == 1
    closed = stats["dialogue"]["closed"]
    assert closed["yes"] > 20 and closed["no"] > 20
    assert "Dialogue:" in (out / "README.md").read_text()
    assert (out / "dataset_info.json").read_text() == (prepared / "dataset_info.json").read_text()


def test_answers_are_grounded_exactly_where_the_image_had_a_green_box(prepared, phantom_units):
    """With the background crop on (the default), each box is the truth's mapped through the crop."""
    truth = {t.id: t for t in read_truth(phantom_units)}
    data = {t.id: d for t, d, _ in generate_rows(120, seed=5)}  # phantom_units' rows: same seed
    grounded = moved = 0
    for record in _all_records(prepared):
        row = truth[record["id"]]
        boxes = _boxes(record)
        assert len(boxes) == (row.roi_box is not None), record["messages"][1]["content"]
        if not boxes:
            continue
        grounded += 1
        (found,) = boxes
        assert found.phrase in ("The region of interest", "The area of interest")
        size = (row.width, row.height)
        crop = prepare_image(data[row.id], grid=DEFAULT_FAMILY.grid).crop_box
        assert _near(found.box, roi_in_model_frame(tuple(row.roi_box), crop, size))
        moved += not _near(found.box, to_grid(tuple(row.roi_box), *size))  # the crop moved it
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["grounding"] == "on" and stats["grounded"] == grounded > 10
    assert moved >= grounded // 2  # so a box left in the uncropped frame would fail above
    card = (prepared / "README.md").read_text()
    assert "Grounded answers (the box, on the 0-1000 grid" in card and "grounding on." in card


def test_no_grounding_leaves_the_captions_and_asks_no_box(prepared, tmp_path):
    out = tmp_path / "plain"
    shutil.copytree(prepared, out)
    stats = prepare_module.finalize(out, dataclasses.replace(FINAL, grounding=False, dialogue=True))
    assert stats["grounded"] == 0 and stats["grounding"] == "off (--no-grounding)"
    grounded = {r["id"]: r for r in _all_records(prepared)}
    for record in _all_records(out):
        assert not _boxes(record) and not _roi_turns(record)
        assert "<|" not in json.dumps(record["messages"])
        caption, _ = unground(grounded[record["id"]]["messages"][1]["content"])
        assert record["messages"][1]["content"] == caption
    assert "grounding off (--no-grounding)" in (out / "README.md").read_text()


def test_a_box_kept_in_the_image_grounds_nothing(phantom_units, tmp_path):
    options = StageOptions(image=ImageOptions(roi_box="keep"))
    final = dataclasses.replace(FINAL, dialogue=True)
    stats = run_prepare(str(phantom_units), tmp_path / "keep", options, final, limit=60, show_progress=False)
    assert stats["roi_box_found"] > 0 and stats["grounded"] == 0
    assert stats["grounding"].startswith("off (--roi-box keep")
    for record in _all_records(tmp_path / "keep"):
        assert not _boxes(record) and not _roi_turns(record)


def test_staging_of_an_older_format_is_refused_with_the_way_out(phantom_units, tmp_path):
    _prepare(phantom_units, tmp_path / "old", limit=20)
    options = tmp_path / "old" / ".staging" / "options.json"
    fingerprint = json.loads(options.read_text())
    del fingerprint["format"]  # as ctscribe wrote it before staging records held the box
    options.write_text(json.dumps(fingerprint))
    with pytest.raises(ValueError, match=r"format 1.*format 2.*restage: delete .*\.staging"):
        _prepare(phantom_units, tmp_path / "old", limit=20)
    with pytest.raises(ValueError, match="format 1"):
        merge_shards([tmp_path / "old"], tmp_path / "merged", FINAL)


def test_splits_are_stable_when_rows_are_added(phantom_units, prepared, tmp_path):
    _prepare(phantom_units, tmp_path / "first60", limit=60)
    small, full = _records(tmp_path / "first60"), _records(prepared)
    full_split = {r["id"]: split for split, rows in full.items() for r in rows}
    for split, rows in small.items():
        for record in rows:
            assert full_split[record["id"]] == split


def test_resume_after_interruption_redoes_nothing_and_matches(phantom_units, prepared, tmp_path, monkeypatch):
    real = prepare_module.stage_unit
    calls = []

    def interrupted(unit, out, options):
        calls.append(unit.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(unit, out, options)

    monkeypatch.setattr(prepare_module, "stage_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(phantom_units, tmp_path / "out")
    assert not (tmp_path / "out" / "train.json").exists()
    done_before = sorted(p.stem for p in (tmp_path / "out" / ".staging" / "units").glob("*.jsonl"))
    assert len(done_before) == 2

    calls.clear()
    monkeypatch.setattr(prepare_module, "stage_unit", lambda *a: (calls.append(a[0].key), real(*a))[1])
    _prepare(phantom_units, tmp_path / "out")
    assert not set(calls) & set(done_before)
    assert len(calls) == 4
    assert _outputs(tmp_path / "out") == _outputs(prepared)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_output(phantom_units, prepared, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "ctscribe",
        "prepare",
        "--source",
        str(phantom_units),
        "--out",
        str(out),
        "--workers",
        "1",
        "--val-fraction",
        "0.15",
        "--test-fraction",
        "0.15",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = out / ".staging" / "units"
    deadline = time.monotonic() + 120
    while not (units.is_dir() and any(units.glob("*.jsonl"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (out / "stats.json").exists(), "finished before it could be killed"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _outputs(out) == _outputs(prepared)


def test_two_shards_merged_equal_one_run(phantom_units, prepared, tmp_path):
    for index in (0, 1):
        summary = _prepare(phantom_units, tmp_path / f"shard{index}", shard=(index, 2))
        assert summary["units_staged"] == 3
        assert not (tmp_path / f"shard{index}" / "train.json").exists()
    merge_shards([tmp_path / "shard1", tmp_path / "shard0"], tmp_path / "merged", FINAL)
    assert _outputs(tmp_path / "merged") == _outputs(prepared)


def test_merge_refuses_incomplete_or_mismatched_shards(phantom_units, tmp_path):
    _prepare(phantom_units, tmp_path / "a", shard=(0, 2))
    with pytest.raises(ValueError, match="exactly once"):
        merge_shards([tmp_path / "a"], tmp_path / "merged", FINAL)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="not a finished prepare shard"):
        merge_shards([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", FINAL)


def test_parallel_workers_give_the_same_output(phantom_units, prepared, tmp_path):
    _prepare(phantom_units, tmp_path / "parallel", workers=2)
    assert _outputs(tmp_path / "parallel") == _outputs(prepared)


def test_hub_path_streams_through_datasets(phantom_units, prepared, tmp_path, monkeypatch):
    import datasets

    real_load = datasets.load_dataset
    seen = {}

    def fake_hub(path, name=None, **kwargs):
        seen.update(path=path, name=name, streaming=kwargs.get("streaming"), token=kwargs.get("token"))
        files = sorted(str(p) for p in (phantom_units / "25M_demo").glob("*.parquet"))
        return real_load("parquet", data_files=files, split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    _prepare("UCSC-VLAA/MedTrinity-25M", tmp_path / "hub", token="hf_test")
    assert seen == {
        "path": "UCSC-VLAA/MedTrinity-25M",
        "name": "25M_demo",
        "streaming": True,
        "token": "hf_test",
    }
    assert _records(tmp_path / "hub") == _records(prepared)


def test_changed_options_are_refused_on_resume(phantom_units, prepared, tmp_path):
    _prepare(phantom_units, tmp_path / "out", limit=20)
    with pytest.raises(ValueError, match="other options"):
        run_prepare(
            str(phantom_units),
            tmp_path / "out",
            StageOptions(image=ImageOptions(max_pixels=128 * 128)),
            FINAL,
            limit=20,
            show_progress=False,
        )


def test_missing_column_is_named(tmp_path):
    pq.write_table(pa.table({"image": [b"x"], "id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="lacks column\\(s\\) caption"):
        _prepare(tmp_path / "bad.parquet", tmp_path / "out")


def test_full_release_with_archives_splits_by_patient(tmp_path):
    phantom = build_phantom_full(tmp_path / "full", rows=60, seed=2)
    truth = read_truth(phantom)
    stats = run_prepare(
        str(phantom / "25M_full" / "metadata.parquet"),
        tmp_path / "out",
        StageOptions(),
        FINAL,
        config="25M_full",
        images=str(phantom / "25M_full" / "archives"),
        show_progress=False,
    )
    assert stats["read"] == 60 == stats["kept"] + sum(stats["skipped"].values())
    assert stats["archives"]["truncated"] == ["dataset_shard_2.tar.zst"]
    assert stats["bad_image_reasons"]["missing image file"] >= 2  # the unlisted image + the truncated tail
    rules = {source: set(by_rule) for source, by_rule in stats["split_by"].items()}
    assert rules == {
        "bhx": {"CQ500 patient"},
        "deeplesion": {"DeepLesion patient"},
        "ct_rate": {"CT-RATE patient"},
        "flare23": {"FLARE case"},
    }
    assert sum(sum(by_rule.values()) for by_rule in stats["split_by"].values()) == stats["kept"]
    assert "DeepLesion patient" in (tmp_path / "out" / "README.md").read_text()
    # Each record's id is the release's file name; a patient's slices (from several studies or
    # scans: full_release_name) never straddle splits, while patients do spread over all three.
    kept = {r["id"]: split for split, rows in _records(tmp_path / "out").items() for r in rows}
    patient_of = {t.file_name: t.patient for t in truth}
    assert set(kept) <= set(patient_of)
    by_patient: dict[str, set[str]] = {}
    for name, split in kept.items():
        by_patient.setdefault(patient_of[name], set()).add(split)
    assert sum(len(splits) == 1 for splits in by_patient.values()) == len(by_patient)
    assert {s for splits in by_patient.values() for s in splits} == {"train", "val", "test"}
    missing = next(t for t in truth if t.archive is None)
    assert missing.file_name not in kept
    # Rows of intact archives that are clean CT are all kept.
    intact = {
        t.file_name
        for t in truth
        if t.archive in ("dataset_shard_0.tar.zst", "dataset_shard_1.tar.zst")
        and t.modality == "CT"
        and not (t.corrupt or t.empty_caption or t.duplicate_of)
    }
    assert intact <= set(kept)


def test_full_release_needs_images(tmp_path):
    phantom = build_phantom_full(tmp_path / "full", rows=20, seed=2)
    with pytest.raises(ValueError, match="needs --images"):
        run_prepare(str(phantom / "25M_full"), tmp_path / "out", StageOptions(), FINAL, config="25M_full")


@pytest.mark.slow
def test_cli_prepare_end_to_end(phantom_units, tmp_path):
    """The user's path, uncropped and with dialogue: boxes within 3% of the truth, asked about once."""
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctscribe",
            "prepare",
            "--source",
            str(phantom_units / "25M_demo"),
            "--out",
            str(out),
            "--workers",
            "2",
            "--lang",
            "both",
            "--no-crop-background",
            "--dialogue",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["options"]["lang"] == "both"
    prompts = [r["messages"][0]["content"] for rows in _records(out).values() for r in rows]
    assert any("英文" in p for p in prompts) and any("English" in p or "CT" in p for p in prompts)
    # Without the crop, the model image is the whole frame resized: the truth's box on its grid.
    truth = {t.id: t for t in read_truth(phantom_units)}
    grounded = 0
    for record in _all_records(out):
        row, boxes, asked = truth[record["id"]], _boxes(record), _roi_turns(record)
        assert len(boxes) == len(asked) == (row.roi_box is not None)
        if boxes:
            grounded += 1
            assert _near(boxes[0].box, to_grid(tuple(row.roi_box), row.width, row.height))
            question, answer = asked[0]
            assert question in QUESTIONS["roi_box"]["en"] + QUESTIONS["roi_box"]["zh"]
            assert answer == roi_sentence(boxes[0].box, "en")
    assert stats["grounded"] == grounded > 10
    assert "grounded answers" in result.stdout
