"""The grounding format: written, read back and removed exactly as Qwen2-VL's tokenizer expects."""

import pytest

from ctscribe.conversation.boxes import (
    GROUNDING_TOKENS,
    GridBox,
    box_iou,
    format_box,
    parse_boxes,
    strip_grounding,
    to_grid,
    to_pixels,
)


def test_the_format_is_qwen2_vls_own():
    text = format_box(GridBox(12, 340, 560, 789), "the region of interest")
    assert text == (
        "<|object_ref_start|>the region of interest<|object_ref_end|>"
        "<|box_start|>(12,340),(560,789)<|box_end|>"
    )
    assert format_box(GridBox(0, 0, 1000, 1000)) == "<|box_start|>(0,0),(1000,1000)<|box_end|>"


def test_the_markers_are_the_tokenizers_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.convert_tokens_to_ids(list(GROUNDING_TOKENS)) == [151646, 151647, 151648, 151649]
    ids = tokenizer(format_box(GridBox(1, 2, 3, 4), "x"))["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=False) == format_box(GridBox(1, 2, 3, 4), "x")
    assert "box_start" not in tokenizer.decode(ids, skip_special_tokens=True)


def test_pixel_boxes_map_to_the_grid_on_the_outer_edge():
    # The whole image is the whole grid: inclusive pixel indices end one pixel before the edge.
    assert to_grid((0, 0, 99, 49), 100, 50) == GridBox(0, 0, 1000, 1000)
    assert to_grid((10, 5, 29, 24), 100, 50) == GridBox(100, 100, 300, 500)
    assert to_pixels(GridBox(100, 100, 300, 500), 100, 50) == (10, 5, 29, 24)
    with pytest.raises(ValueError):
        to_grid((10, 5, 100, 24), 100, 50)


def test_parse_reads_what_format_writes_and_skips_what_is_not_a_box():
    box = GridBox(100, 200, 300, 400)
    text = f"The {format_box(box, 'region of interest')} is dense. Also {format_box(GridBox(0, 0, 5, 5))}."
    found = parse_boxes(text)
    assert [(g.phrase, g.box) for g in found] == [("region of interest", box), ("", GridBox(0, 0, 5, 5))]
    assert parse_boxes("<|box_start|>( 1 , 2 ),( 3,4 )<|box_end|>")[0].box == GridBox(1, 2, 3, 4)
    assert parse_boxes("<|box_start|>(500,2),(3,4)<|box_end|>") == []  # inverted
    assert parse_boxes("<|box_start|>(1,2),(3,1200)<|box_end|>") == []  # off the grid
    assert parse_boxes("(1,2),(3,4)") == []  # decoded without its special tokens


def test_strip_leaves_the_phrase_and_optionally_a_marker():
    text = f"The {format_box(GridBox(1, 2, 3, 4), 'region of interest')}, located centrally, is dense."
    assert strip_grounding(text) == "The region of interest, located centrally, is dense."
    assert (
        strip_grounding(text, "[box {n}]") == "The region of interest [box 1], located centrally, is dense."
    )
    assert strip_grounding("Broken <|box_start|>(1,2) here<|object_ref_end|>.") == "Broken (1,2) here."


def test_iou():
    a = GridBox(0, 0, 100, 100)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, GridBox(50, 0, 150, 100)) == pytest.approx(50 / 150)
    assert box_iou(a, GridBox(200, 200, 300, 300)) == 0.0
