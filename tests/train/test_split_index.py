"""The split's sample table: measured once per data set, read lazily, identical to measuring in memory."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from ctscribe.ct.images import ImageOptions
from ctscribe.prepare.run import JsonArrayWriter
from ctscribe.train.samples import SFTDataset
from ctscribe.train.split_index import INDEX_DIR, line_offsets, load_split

OPTIONS = ImageOptions(max_pixels=262144, roi_box="keep", crop_background=False)


def _write_prepared(path, records):
    """As `ctscribe prepare` writes a split: a JSON array, one record per line."""
    writer = JsonArrayWriter(path)
    for record in records:
        writer.write(record)
    writer.commit()


def _records(image_records):
    root, records = image_records
    missing = {**records[0], "id": "gone", "images": ["images/missing.png"]}
    return root, [*records, missing, *records]


@pytest.mark.parametrize("layout", ["prepared", "one_line", "indented"])
def test_split_table_equals_measuring_in_memory(tmp_path, processor, image_records, family, layout):
    root, records = _records(image_records)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for image in (root / "images").iterdir():
        (data / "images" / image.name).write_bytes(image.read_bytes())
    path = data / "train.json"
    if layout == "prepared":
        _write_prepared(path, records)
    else:
        path.write_text(json.dumps(records, indent=2 if layout == "indented" else None))
    assert (line_offsets(path) is not None) == (layout == "prepared")  # else copied once to JSON Lines
    args = (processor.tokenizer, processor.image_processor, OPTIONS, 64, family)
    in_memory = SFTDataset(records, data, *args)
    lazy = SFTDataset.from_split(path, *args)
    assert lazy.dropped == in_memory.dropped == {"unreadable image (FileNotFoundError)": 1}
    assert lazy.lengths.tolist() == in_memory.lengths.tolist()
    assert [lazy.records[int(i)]["id"] for i in lazy.positions] == ["a", "b", "c", "a", "b", "c"]
    for i in range(len(lazy)):
        assert lazy[i]["input_ids"].tolist() == in_memory[i]["input_ids"].tolist()
    assert lazy.image_tokens() == in_memory.image_tokens() > 0
    head = SFTDataset.from_split(path, *args, max_samples=4)
    assert len(head) == 3 and head.dropped == {"unreadable image (FileNotFoundError)": 1}


def test_a_family_of_another_grid_measures_its_own_table(tmp_path, processor, image_records, family):
    """The table keys on the family: with the same tokenizer and data, a family that sizes images on a
    32-px grid measures other lengths instead of reading the 28-px family's."""
    import dataclasses

    from ctscribe.models.qwen import image_grid

    root, records = image_records
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for image in (root / "images").iterdir():
        (data / "images" / image.name).write_bytes(image.read_bytes())
    _write_prepared(data / "train.json", records)
    other = dataclasses.replace(family, model_type="other", grid=image_grid(patch=16, merge=2))
    lengths = {}
    for each in (family, other):
        args = (processor.tokenizer, processor.image_processor, OPTIONS, 512, each)
        lengths[each.model_type] = SFTDataset.from_split(data / "train.json", *args).lengths.tolist()
        assert lengths[each.model_type] == SFTDataset(records, data, *args).lengths.tolist()
    assert lengths["other"] != lengths[family.model_type]
    assert len([table for table in (data / INDEX_DIR).iterdir() if table.is_dir()]) == 2


def _count_calls(record, log):
    with open(log, "a") as handle:
        handle.write(record["id"] + "\n")
    return len(record["messages"]), 0


def _load(path, log):
    records, table = load_split(path, {"cutoff_len": 1}, lambda record: _count_calls(record, log))
    return len(records), table.lengths.tolist()


def test_table_is_measured_once_by_one_of_several_processes(tmp_path):
    path = tmp_path / "train.json"
    records = [{"id": f"r{i}", "messages": [{}] * (i % 3 + 1)} for i in range(50)]
    _write_prepared(path, records)
    log = tmp_path / "calls.txt"
    # Three ranks start at once: one measures, the others wait on the lock and read its table.
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.starmap(_load, [(path, log)] * 3)
    assert results == [(50, [i % 3 + 1 for i in range(50)])] * 3
    assert len(log.read_text().splitlines()) == 50
    assert _load(path, log) == results[0] and len(log.read_text().splitlines()) == 50  # a restart
    assert len(list((tmp_path / INDEX_DIR).glob("train-*/meta.json"))) == 1
    load_split(path, {"cutoff_len": 2}, lambda record: _count_calls(record, log))  # another setting
    _write_prepared(path, records[:10])  # another file
    assert _load(path, log)[0] == 10
    assert len(log.read_text().splitlines()) == 50 + 50 + 10
    assert len(list((tmp_path / INDEX_DIR).glob("train-*/meta.json"))) == 3
