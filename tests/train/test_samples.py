import json

import pytest
import torch
from PIL import Image

from ctscribe.conversation.template import render_conversation
from ctscribe.ct.images import ImageOptions
from ctscribe.fixtures.tiny_model import ENDOFTEXT_ID, IM_END_ID, IMAGE_PAD_ID, VIDEO_PAD_ID
from ctscribe.train.samples import (
    IGNORE_INDEX,
    Encoded,
    SFTDataset,
    collate,
    encode_text,
    expand_image_pads,
    mm_token_types,
)


def _as_template_messages(messages):
    """Our sharegpt messages in the content-list form apply_chat_template takes."""
    out = []
    for m in messages:
        if "<image>" in m["content"]:
            text = m["content"].replace("<image>", "")
            out.append({"role": m["role"], "content": [{"type": "image"}, {"type": "text", "text": text}]})
        else:
            out.append(m)
    return out


def test_chinese_answers_are_labelled_whole_and_nothing_else(processor, conversations, family):
    chinese = conversations["chinese"]
    tokenizer = processor.tokenizer
    encoded = encode_text(tokenizer, chinese, family.template)
    labelled = [
        token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX
    ]
    answers = [m["content"] for m in chinese if m["role"] == "assistant"]
    assert tokenizer.decode(labelled) == "".join(f"{answer}<|im_end|>" for answer in answers)
    assert labelled.count(IM_END_ID) == len(answers)
    unlabelled = tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE_INDEX]
    )
    assert "病变在右侧吗？" in unlabelled and "不是" not in unlabelled


def test_loss_mask_covers_exactly_the_answers_and_their_im_end(processor, conversations, family):
    dialogue = conversations["dialogue"]
    tokenizer = processor.tokenizer
    encoded = encode_text(tokenizer, dialogue, family.template)
    labelled = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    answers = [tokenizer("The brain.")["input_ids"], tokenizer("Yes, on the left.")["input_ids"]]
    # Find each answer in the ids: the labelled positions are the answer tokens plus the <|im_end|> after.
    expected = []
    for answer in answers:
        start = next(
            i for i in range(len(encoded.input_ids)) if encoded.input_ids[i : i + len(answer)] == answer
        )
        expected += list(range(start, start + len(answer) + 1))
        assert encoded.input_ids[start + len(answer)] == IM_END_ID
    assert labelled == expected
    assert [encoded.labels[i] for i in labelled] == [encoded.input_ids[i] for i in labelled]
    # Exact positions for the real tokenizer: system (21 tokens incl. its newline) + user turn ...
    assert labelled[0] == len(
        tokenizer(render_conversation(dialogue[:1], family.template)[0] + "<|im_start|>assistant\n")[
            "input_ids"
        ]
    )


def test_ids_match_the_processor_after_image_expansion(processor, conversations, family):
    one_turn = conversations["one_turn"]
    image = Image.new("RGB", (112, 112), "gray")
    features = processor.image_processor(images=[image], return_tensors="pt")
    tokens = int(features["image_grid_thw"].prod()) // 4
    ours = expand_image_pads(
        encode_text(processor.tokenizer, one_turn, family.template), [tokens], 2048, IMAGE_PAD_ID
    )
    prompt = processor.apply_chat_template(_as_template_messages(one_turn))
    theirs = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert ours.input_ids == theirs
    assert ours.input_ids.count(IMAGE_PAD_ID) == tokens == 16


def test_truncation_never_cuts_image_tokens():
    encoded = Encoded([1, IMAGE_PAD_ID, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, 4])
    assert expand_image_pads(encoded, [10], 8, IMAGE_PAD_ID) == "image tokens beyond cutoff_len"
    kept = expand_image_pads(encoded, [3], 6, IMAGE_PAD_ID)
    assert kept.input_ids == [1, IMAGE_PAD_ID, IMAGE_PAD_ID, IMAGE_PAD_ID, 2, 3]
    assert kept.labels[-1] == 3
    assert expand_image_pads(encoded, [3], 5, IMAGE_PAD_ID) == "no answer tokens within cutoff_len"
    mismatch = expand_image_pads(encoded, [3, 3], 50, IMAGE_PAD_ID)
    assert mismatch == "images and <image> placeholders differ in number"


def _record(tmp_path, name, size, answer):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", size, "gray").save(tmp_path / "images" / f"{name}.png")
    return {
        "id": name,
        "messages": [
            {"role": "user", "content": "<image>Describe."},
            {"role": "assistant", "content": answer},
        ],
        "images": [f"images/{name}.png"],
    }


def test_dataset_drops_and_counts_samples_that_cannot_fit(tmp_path, processor, conversations, family):
    records = [
        _record(tmp_path, "fits", (112, 112), "CT of the head."),
        _record(tmp_path, "big", (512, 512), "CT of the chest."),  # 324 image tokens > cutoff 128
        {"id": "gone", "messages": conversations["one_turn"], "images": ["images/missing.png"]},
    ]
    dataset = SFTDataset(
        records,
        tmp_path,
        processor.tokenizer,
        processor.image_processor,
        ImageOptions(max_pixels=512 * 512, roi_box="keep", crop_background=False),
        cutoff_len=128,
        family=family,
    )
    assert len(dataset) == 1
    assert dataset.dropped == {"image tokens beyond cutoff_len": 1, "unreadable image (FileNotFoundError)": 1}
    sample = dataset[0]
    assert int((sample["input_ids"] == IMAGE_PAD_ID).sum()) == 16
    assert sample["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert sample["pixel_values"].shape[0] == 64  # 8 x 8 patches of 14 px


def test_collate_pads_right_and_concatenates_patches(tmp_path, processor, family):
    records = [
        _record(tmp_path, "a", (112, 112), "Short."),
        _record(tmp_path, "b", (224, 112), "A longer answer."),
    ]
    dataset = SFTDataset(
        records,
        tmp_path,
        processor.tokenizer,
        processor.image_processor,
        ImageOptions(roi_box="keep", crop_background=False),
        cutoff_len=512,
        family=family,
    )
    batch = collate([dataset[0], dataset[1]], dataset.tokens, token_types=dataset.token_types)
    lengths = [len(dataset[i]["input_ids"]) for i in range(2)]
    assert batch["input_ids"].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert batch["attention_mask"][short].sum() == min(lengths)
    assert (batch["labels"][short, min(lengths) :] == IGNORE_INDEX).all()
    assert (batch["input_ids"][short, min(lengths) :] == ENDOFTEXT_ID).all()  # the tokenizer's pad
    assert batch["pixel_values"].shape[0] == 64 + 128
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 16]]


def test_mm_token_types_mark_image_tokens():
    ids = torch.tensor([[1, IMAGE_PAD_ID, IMAGE_PAD_ID, VIDEO_PAD_ID, 5]])
    assert mm_token_types(ids, IMAGE_PAD_ID, VIDEO_PAD_ID).tolist() == [[0, 1, 1, 2, 0]]


def test_load_records_errors_are_clear(tmp_path):
    from ctscribe.train.samples import load_records

    with pytest.raises(FileNotFoundError, match="ctscribe prepare"):
        load_records(tmp_path / "train.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps([{"a": 1}, {"a": 2}, {"a": 3}]))
    assert load_records(tmp_path / "ok.json", max_samples=2) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_a_familys_answer_carries_its_boxes_in_its_own_convention(tmp_path, family_model_dir, model_type):
    """Records keep 0-1000 boxes; Qwen2.5-VL trains on pixels of the image as the model sees it
    (a 300 x 217 image becomes 308 x 224 at the budget), Qwen2-VL on the grid as written. The
    length check ran on the same text: the sample it measured is the one it returns."""
    from transformers import AutoProcessor

    from ctscribe.models import FAMILIES

    phrase = "A <|object_ref_start|>lesion<|object_ref_end|>"
    answer = phrase + "<|box_start|>(100,250),(500,1000)<|box_end|>."
    pixels = phrase + "<|box_start|>(31,56),(154,224)<|box_end|>."
    expected = {"qwen2_vl": answer, "qwen2_5_vl": pixels}[model_type]
    processor = AutoProcessor.from_pretrained(family_model_dir(model_type))
    dataset = SFTDataset(
        [_record(tmp_path, "slice", (300, 217), answer)],
        tmp_path,
        processor.tokenizer,
        processor.image_processor,
        ImageOptions(roi_box="keep", crop_background=False),
        cutoff_len=1024,
        family=FAMILIES[model_type],
    )
    sample = dataset[0]
    assert sample["image_grid_thw"].tolist() == [[1, 16, 22]]  # 224 x 308 pixels in 14-px patches
    labelled = sample["input_ids"][sample["labels"] != IGNORE_INDEX].tolist()
    assert processor.tokenizer.decode(labelled) == expected + "<|im_end|>"
    assert len(sample["input_ids"]) == dataset.lengths[0]
