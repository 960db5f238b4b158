"""The record format prepare writes, and the one bridge from a record to inference messages."""

from ctscribe.conversation.prompts import HELD_OUT, PROMPTS
from ctscribe.conversation.records import IMAGE_PLACEHOLDER, record_prompt
from ctscribe.prepare.dialogue import dialogue_meta, followups
from ctscribe.prepare.records import dataset_info, sft_record


def test_a_record_is_sharegpt_with_the_image_placeholder_before_the_prompt():
    record = sft_record("r1", "images/ab/r1.png", "CT of the chest.", "train")
    assert set(record) == {"id", "messages", "images"}
    assert record["images"] == ["images/ab/r1.png"]
    user, answer = record["messages"]
    assert user["role"] == "user" and user["content"].startswith(IMAGE_PLACEHOLDER)
    assert user["content"].removeprefix(IMAGE_PLACEHOLDER) in PROMPTS["en", "en"][:-HELD_OUT]
    assert answer == {"role": "assistant", "content": "CT of the chest."}


def test_test_records_ask_held_out_prompts_in_the_chosen_languages():
    record = sft_record("r1", "r1.png", "胸部CT。", "test", lang="zh", answer_lang="zh")
    assert record_prompt(record) in PROMPTS["zh", "zh"][-HELD_OUT:]


def test_dialogue_records_carry_the_follow_ups_and_their_description(real_caption):
    record = sft_record("r1", "r1.png", real_caption, "val", dialogue=True)
    turns = followups("r1", real_caption, "en")
    assert turns  # the caption answers some follow-ups, so the check below is not vacuous
    messages = record["messages"]
    assert len(messages) == 2 + 2 * len(turns)
    for k, turn in enumerate(turns):
        assert messages[2 + 2 * k] == {"role": "user", "content": turn.question}
        assert messages[3 + 2 * k] == {"role": "assistant", "content": turn.answer}
    assert record["dialogue"] == dialogue_meta(turns)


def test_dataset_info_names_the_three_splits_in_sharegpt_form():
    info = dataset_info("ct")
    assert {name: entry["file_name"] for name, entry in info.items()} == {
        "ct": "train.json",
        "ct_val": "val.json",
        "ct_test": "test.json",
    }
    assert all(entry["formatting"] == "sharegpt" for entry in info.values())
    assert info["ct"]["columns"] == {"messages": "messages", "images": "images"}
