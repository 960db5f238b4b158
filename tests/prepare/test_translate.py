"""translate: Chinese answers joined from a file or asked from a real ``ctscribe serve`` on loopback.

The server runs the random tiny model, whose answers are meaningless: what is tested is the
plumbing (requests, cache, resume, failure counting, the output data set), not translation quality.
"""

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from ctscribe.conversation.boxes import GridBox, parse_boxes
from ctscribe.conversation.prompts import PROMPTS
from ctscribe.prepare.grounding import roi_sentence
from ctscribe.prepare.records import dataset_info, sft_record
from ctscribe.prepare.translate import (
    CACHE,
    TranslateOptions,
    TranslationCache,
    api_root,
    check_translation,
    description,
    read_captions_zh,
    run_translate,
    write_translated,
)

# (caption, its Chinese version); the first appears twice, so 3 distinct captions in 9 records
CAPTIONS = (
    ("CT of the chest. A lesion is present on the left side.", "胸部CT。左侧可见病变。"),
    ("CT of the head. No lesion is seen.", "头部CT。未见病变。"),
    ("CT of the abdomen. A lesion is present on the right side.", "腹部CT。右侧可见病变。"),
)
SPLIT_OF = ["train"] * 7 + ["val", "test"]
DISTINCT = len(CAPTIONS)


@pytest.fixture
def prepared(tmp_path):
    """A prepared data set with dialogue records, in ctscribe prepare's layout."""
    root = tmp_path / "data"
    records = {"train": [], "val": [], "test": []}
    for index, split in enumerate(SPLIT_OF):
        image = f"images/{index:02d}/r{index}.png"
        (root / image).parent.mkdir(parents=True)
        Image.new("L", (112, 112), color=40 * (index % 3) + 20).save(root / image)
        caption = CAPTIONS[index % DISTINCT][0]
        records[split].append(sft_record(f"r{index}", image, caption, split, dialogue=True))
    for split, rows in records.items():
        (root / f"{split}.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps(dataset_info("mllm_med")))
    return root


def _records(folder):
    return {split: json.loads((folder / f"{split}.json").read_text()) for split in ("train", "val", "test")}


def _captions_zh(path, skip_last=False):
    rows = [{"id": f"r{i}", "caption_zh": CAPTIONS[i % DISTINCT][1]} for i in range(len(SPLIT_OF))]
    rows = rows[:-1] if skip_last else rows
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def test_api_root_adds_v1_only_to_a_bare_server_url():
    assert api_root("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert api_root("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/v1"
    assert api_root("http://host/v1/") == "http://host/v1"
    assert api_root("https://host/openai/v1") == "https://host/openai/v1"


def test_a_translation_is_refused_for_a_reason():
    assert check_translation("胸部CT。左侧可见病变。", "stop") is None
    assert check_translation("  ", "stop") == "empty answer"
    assert check_translation("胸部CT。左侧", "length") == "cut off at max_tokens"
    assert check_translation("CT of the chest.", "stop") == "answer is not Chinese"
    assert check_translation("CT of the chest.", "length", check=False) is None
    assert check_translation("", "stop", check=False) == "empty answer"


def test_cache_survives_a_torn_last_line(tmp_path):
    cache = TranslationCache(tmp_path / CACHE)
    cache.add([("a", "甲"), ("b", "乙")], "m")
    with (tmp_path / CACHE).open("a") as handle:
        handle.write('{"key": "torn')
    reread = TranslationCache(tmp_path / CACHE)
    assert reread.get("a") == "甲" and reread.get("b") == "乙" and "c" not in reread
    reread.add([("c", "丙")], "m")  # starts on a line of its own, after the torn one
    assert TranslationCache(tmp_path / CACHE).get("c") == "丙"


def test_a_record_without_an_answer_is_skipped_and_counted(tmp_path):
    answered = sft_record("r0", "images/r0.png", CAPTIONS[0][0], "train")
    unanswered = {**answered, "id": "r1", "messages": answered["messages"][:1]}  # hand-edited
    (tmp_path / "images").mkdir()
    (tmp_path / "out" / "images").mkdir(parents=True)  # run_translate makes them
    Image.new("L", (8, 8)).save(tmp_path / "images" / "r0.png")
    stats = write_translated(
        tmp_path,
        tmp_path / "out",
        {"train": [answered, unanswered]},
        lambda _: CAPTIONS[0][1],
        TranslateOptions(),
    )
    assert stats["kept"] == 1 and stats["skipped"] == {"no_answer": 1}


def test_captions_zh_reads_jsonl_and_csv_and_names_a_missing_field(tmp_path):
    jsonl = _captions_zh(tmp_path / "zh.jsonl")
    assert read_captions_zh(jsonl)["r1"] == CAPTIONS[1][1]
    csv_path = tmp_path / "zh.csv"
    csv_path.write_text("id,caption_zh\nr0,胸部CT。\nr1,\n", encoding="utf-8")
    assert read_captions_zh(csv_path) == {"r0": "胸部CT。"}  # a blank caption is no caption
    (tmp_path / "bad.jsonl").write_text('{"id": "r0", "caption": "x"}\n')
    with pytest.raises(ValueError, match="caption_zh"):
        read_captions_zh(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        read_captions_zh(tmp_path / "missing.csv")


def test_joined_chinese_captions_give_chinese_records_with_rebuilt_dialogue(prepared, tmp_path):
    out = tmp_path / "zh"
    stats = run_translate(
        prepared, out, TranslateOptions(), captions_zh=_captions_zh(tmp_path / "zh.jsonl", skip_last=True)
    )
    assert stats["kept"] == len(SPLIT_OF) - 1 and stats["skipped"] == {"no_translation": 1}
    assert stats["answers"] == {"zh": len(SPLIT_OF) - 1}
    assert stats["splits"] == {"train": 7, "val": 1, "test": 0}  # the test record had no caption
    source, translated = _records(prepared), _records(out)
    for split, rows in translated.items():
        for record in rows:
            index = int(record["id"][1:])
            assert record["id"] in {r["id"] for r in source[split]}
            assert record["messages"][0]["content"].removeprefix("<image>") in PROMPTS["zh", "zh"]
            assert record["messages"][1]["content"] == CAPTIONS[index % DISTINCT][1]
            assert len(record["messages"]) > 2 and record["dialogue"][0]["kind"] == "description"
            answers = [m["content"] for m in record["messages"][3::2]]
            for meta, answer in zip(record["dialogue"][1:], answers, strict=True):
                if meta["kind"] == "closed":
                    assert answer in ("是。", "不是。", "有。", "没有。")
                else:
                    assert answer.rstrip("。") in record["messages"][1]["content"]
            assert (out / record["images"][0]).is_file()
    assert json.loads((out / "stats.json").read_text())["dialogue"]["closed"]["yes"] > 0
    assert json.loads((out / "dataset_info.json").read_text()) == dataset_info("mllm_med")


def test_both_answers_mix_languages_by_id_and_keep_english_records(prepared, tmp_path):
    out = tmp_path / "both"
    options = TranslateOptions(answers="both", lang="en")
    stats = run_translate(prepared, out, options, captions_zh=_captions_zh(tmp_path / "zh.jsonl"))
    assert stats["answers"]["zh"] > 0 and stats["answers"]["en"] > 0
    for record in (r for rows in _records(out).values() for r in rows):
        lang = options.answer_language(record["id"])
        assert record["messages"][0]["content"].removeprefix("<image>") in PROMPTS["en", lang]
        assert (record["messages"][1]["content"] in dict(CAPTIONS).values()) == (lang == "zh")


def test_a_grounded_record_keeps_its_box_in_either_language(tmp_path):
    root, box = tmp_path / "data", GridBox(100, 200, 300, 400)
    records = {"train": [], "val": [], "test": []}
    for index, (caption, _) in enumerate(CAPTIONS):
        image = f"images/r{index}.png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("L", (112, 112)).save(root / image)
        grounded = box if index != 1 else None  # the head caption has no lesion, so no box
        record = sft_record(f"r{index}", image, caption, "train", box=grounded)
        records["train"].append(record)
    for split, rows in records.items():
        (root / f"{split}.json").write_text(json.dumps(rows))
    assert [description(r) for r in records["train"]] == [en for en, _ in CAPTIONS]  # what is translated

    zh = _captions_zh(tmp_path / "zh.jsonl")
    run_translate(root, tmp_path / "out", TranslateOptions(answers="zh"), captions_zh=zh)
    for record in _records(tmp_path / "out")["train"]:
        index = int(record["id"][1:])
        expected = CAPTIONS[index][1] + (roi_sentence(box, "zh") if index != 1 else "")
        assert record["messages"][1]["content"] == expected
        assert [g.box for g in parse_boxes(expected)] == ([box] if index != 1 else [])


def test_translate_needs_exactly_one_source_of_chinese(prepared, tmp_path):
    with pytest.raises(ValueError, match="either --base-url"):
        run_translate(prepared, tmp_path / "x", TranslateOptions())
    with pytest.raises(ValueError, match="new folder"):
        run_translate(prepared, prepared, TranslateOptions(), captions_zh=tmp_path / "zh.jsonl")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, start_server):
    """``ctscribe serve`` with the random tiny model, made to answer something: left alone it answers
    only whitespace (stripped to ""), so its copy suppresses every token that decodes to whitespace."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("translate-server")
    model = shutil.copytree(tiny_model_dir, root / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(model)
    config = json.loads((model / "generation_config.json").read_text())
    config["suppress_tokens"] = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    (model / "generation_config.json").write_text(json.dumps(config))
    running = start_server(model, root / "server.log")
    yield running
    running.stop()


def _requests_seen(server) -> int:
    return server.log.read_text().count(" queued: ")


@pytest.mark.slow
def test_translate_against_a_real_server_counts_failures_caches_and_resumes(prepared, tmp_path, server):
    out = tmp_path / "zh"
    short = TranslateOptions(max_tokens=8)
    unchecked = TranslateOptions(max_tokens=8, check_answers=False)

    # the server is down: every distinct caption fails, with the reason counted; nothing is cached
    down = run_translate(
        prepared, out, TranslateOptions(batch_size=4), base_url="http://127.0.0.1:9", model="tiny"
    )
    assert down["translation"]["failed"] == {"request failed: APIConnectionError": DISTINCT}
    assert down["kept"] == 0 and down["skipped"] == {"no_translation": len(SPLIT_OF)}
    assert not (out / CACHE).exists() or not (out / CACHE).read_text()

    # checked answers: the random model's text is cut off and not Chinese, so each fails and is counted
    before = _requests_seen(server)
    checked = run_translate(prepared, out, short, base_url=server.url)
    assert checked["translation"]["requested"] == DISTINCT == _requests_seen(server) - before
    assert checked["translation"]["failed"] == {"cut off at max_tokens": DISTINCT}
    assert checked["kept"] == 0

    # unchecked (the plumbing): through the CLI, each distinct caption is asked once and cached
    before = _requests_seen(server)
    command = [
        sys.executable, "-m", "ctscribe", "translate", "--data", str(prepared), "--out", str(out),
        "--base-url", server.url, "--max-tokens", "8", "--no-check-answers",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{DISTINCT} requested, {DISTINCT} translated" in done.stdout
    assert _requests_seen(server) - before == DISTINCT
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == len(SPLIT_OF) and stats["translation"]["model"]
    cache = TranslationCache(out / CACHE)
    assert len(cache.entries) == DISTINCT
    for record in (r for rows in _records(out).values() for r in rows):
        caption = CAPTIONS[int(record["id"][1:]) % DISTINCT][0]
        assert record["messages"][1]["content"].startswith(cache.get(caption)[:10])

    # a killed run: the last cache line torn; the rerun asks only for that caption
    lines = (out / CACHE).read_text().splitlines()
    (out / CACHE).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    before = _requests_seen(server)
    resumed = run_translate(prepared, out, unchecked, base_url=server.url)
    assert resumed["translation"]["requested"] == 1 == _requests_seen(server) - before
    assert resumed["translation"]["cached"] == DISTINCT - 1

    # everything cached: no request at all
    before = _requests_seen(server)
    again = run_translate(prepared, out, unchecked, base_url=server.url)
    assert again["translation"]["requested"] == 0 and _requests_seen(server) == before
    assert again["kept"] == len(SPLIT_OF)


@pytest.mark.slow
def test_chinese_dialogue_data_trains(prepared, tmp_path, tiny_model_dir):
    """Chinese prompts, captions and follow-ups tokenise, keep their answers within cutoff_len, and
    train a few steps of the tiny-cpu recipe."""
    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import train

    out = tmp_path / "zh"
    run_translate(prepared, out, TranslateOptions(), captions_zh=_captions_zh(tmp_path / "zh.jsonl"))
    recipe = load_recipe(
        "tiny-cpu",
        ["max_steps=2", "save_steps=1000", "eval_steps=1000", "logging_steps=1"],
        dataset_dir=str(out),
        output_dir=str(tmp_path / "run"),
        model_name_or_path=str(tiny_model_dir),
    )
    final = train(recipe)
    assert (final / "model.safetensors").is_file()
    data_stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert data_stats["train"] == 7 and data_stats["train_dropped"] == {}
    losses = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in row and row["loss"] > 0 for row in losses)
