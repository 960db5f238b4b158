"""Generated ids as text: the grounding markers survive, every other special token goes."""

import pytest

from ctscribe.conversation.boxes import GROUNDING_TOKENS, GridBox, format_box, parse_boxes
from ctscribe.generate.decoding import decode_keeping_grounding, drop_control_tokens, hidden_special_ids

GROUNDED = f"The {format_box(GridBox(120, 340, 560, 780), 'region of interest')} is dense."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def grounded_ids(tokenizer) -> list[int]:
    """What a model that grounds writes: the caption with its box, then the end of its turn."""
    ends = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    return tokenizer(GROUNDED)["input_ids"] + ends


def test_the_markers_stay_and_the_end_of_turn_goes(tokenizer):
    ids = grounded_ids(tokenizer)
    assert decode_keeping_grounding(tokenizer, ids) == GROUNDED
    assert parse_boxes(decode_keeping_grounding(tokenizer, ids))[0].box == GridBox(120, 340, 560, 780)
    # The control: the usual decoding loses the markers, so the box cannot be read back.
    assert parse_boxes(tokenizer.decode(ids, skip_special_tokens=True)) == []


def test_hidden_ids_are_read_from_the_tokenizer(tokenizer):
    hidden = hidden_special_ids(tokenizer)
    grounding = set(tokenizer.convert_tokens_to_ids(list(GROUNDING_TOKENS)))
    assert not hidden & grounding
    named = ["<|im_end|>", "<|endoftext|>", "<|im_start|>", "<|vision_pad|>", "<|image_pad|>"]
    assert set(tokenizer.convert_tokens_to_ids(named)) <= hidden
    assert tokenizer.pad_token_id in hidden


def test_a_servers_text_loses_its_control_tokens_but_not_its_markers():
    assert drop_control_tokens(GROUNDED + "<|im_end|><|endoftext|>") == GROUNDED
    assert drop_control_tokens("<|vision_start|><|image_pad|>x <|box_start|>") == "x <|box_start|>"
    assert drop_control_tokens("a < b | c > d") == "a < b | c > d"
