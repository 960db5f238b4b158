"""The grounding format: written, read back and removed exactly as Qwen2-VL's tokenizer expects."""

import itertools
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ctscribe.conversation.boxes import (
    GRID,
    GROUNDING_TOKENS,
    GridBox,
    ImageFrame,
    Located,
    box_iou,
    format_box,
    from_model,
    locate,
    messages_to_model,
    parse_boxes,
    reader_text,
    settled,
    strip_grounding,
    to_grid,
    to_model,
    to_pixels,
)
from ctscribe.ct.images import ImageOptions, find_roi_box, prepare_image
from ctscribe.models import DEFAULT_FAMILY, FAMILIES


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


OFF_GRID = "<|object_ref_start|>mass<|object_ref_end|><|box_start|>(1,2),(3,1200)<|box_end|>"


def _split_at_tokens(text: str) -> list[str]:
    """``text`` cut before and after each grounding token (a stream carries a special token whole)."""
    return [part for part in re.split("(" + "|".join(map(re.escape, GROUNDING_TOKENS)) + ")", text) if part]


def _boxed_scan(box: tuple[int, int, int, int]) -> Image.Image:
    """A 420 x 300 "scan": a grey body off-centre in black air, with MedTrinity's green box drawn on."""
    image = Image.new("RGB", (420, 300))
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 40, 400, 280), fill=(140, 140, 140))
    draw.rectangle(box, outline=(0, 255, 0), width=2)
    return image


def test_a_box_in_the_model_frame_maps_back_through_crop_and_resize_to_the_users_pixels():
    drawn = (200, 90, 289, 169)
    prepared = prepare_image(
        _boxed_scan(drawn), ImageOptions(max_pixels=224 * 224, roi_box="keep"), grid=DEFAULT_FAMILY.grid
    )
    assert prepared.crop_box is not None and prepared.crop_box[0] > 100  # the air on the left is cut
    assert prepared.image.width != prepared.crop_box[2] - prepared.crop_box[0]  # and resized
    # What a model that points at the box exactly would write: the box as it appears to the model.
    seen = find_roi_box(prepared.image)
    grid = to_grid(seen, *prepared.image.size)
    back = prepared.frame.to_pixels(grid)
    assert np.abs(np.subtract(back, drawn)).max() <= 2, (back, drawn)
    # Control: the same grid box read as a box of the whole image misses by the crop offset.
    whole = ImageFrame(*prepared.full_frame.size).to_pixels(grid)
    assert np.abs(np.subtract(whole, drawn)).max() > 20


def test_an_uncropped_frame_is_the_plain_pixel_mapping():
    assert ImageFrame(100, 50).to_pixels(GridBox(100, 100, 300, 500)) == to_pixels(
        GridBox(100, 100, 300, 500), 100, 50
    )
    assert ImageFrame(400, 300, (100, 0, 300, 300)).to_pixels(GridBox(0, 0, 500, 1000)) == (100, 0, 199, 299)


def test_located_boxes_are_numbered_as_the_reader_text_numbers_them():
    text = (
        f"The {format_box(GridBox(1, 2, 3, 4), 'lesion')} and a "
        f"{OFF_GRID} then {format_box(GridBox(500, 500, 600, 700), 'cyst')}."
    )
    assert reader_text(text) == "The lesion [box 1] and a mass then cyst [box 2]."
    assert reader_text("A CT , as written .") == "A CT , as written ."  # no markup: untouched
    found = locate(text, ImageFrame(1000, 1000))
    assert [(box.phrase, box.pixels) for box in found] == [
        ("lesion", (1, 2, 2, 3)),
        ("cyst", (500, 500, 599, 699)),
    ]
    assert locate(text, None)[1] == Located("cyst", GridBox(500, 500, 600, 700), None)
    assert found[1].as_dict() == {
        "phrase": "cyst",
        "box_1000": [500, 500, 600, 700],
        "box_pixels": [500, 500, 599, 699],
    }


def test_a_streamed_answer_shows_readable_text_that_only_grows():
    answer = (
        f"A CT of the head; {format_box(GridBox(250, 300, 500, 620), 'the region of interest')} is dense."
    )
    # Special tokens arrive whole; split the rest into short pieces, as a stream would.
    pieces = [
        piece
        for part in _split_at_tokens(answer)
        for piece in ([part] if part in GROUNDING_TOKENS else list(part))
    ]
    shown, raw = [], ""
    for piece in pieces:
        raw += piece
        shown.append(reader_text(settled(raw)))
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
    assert shown[-1] == reader_text(answer) == "A CT of the head; the region of interest [box 1] is dense."
    assert not any("<|" in text or "(250" in text for text in shown)
    # Control: without holding back the open span, a reader would see the box's numbers arrive.
    assert "(250" in reader_text(answer[: answer.index("(250") + 4])


# ---------------------------------------------------------------------------------------------
# A family's own convention at the model's edge


PIXEL_FAMILY = FAMILIES["qwen2_5_vl"]  # corners in pixels of the image the model sees
GROUNDED = (
    "A <|object_ref_start|>hypodense lesion<|object_ref_end|><|box_start|>(100,250),(500,1000)<|box_end|> "
    "in the liver; <|box_start|>(0,0),(1000,999)<|box_end|>."
)


def test_pixel_corners_are_the_grid_corners_scaled_to_the_image_the_model_sees():
    text = to_model(GROUNDED, PIXEL_FAMILY.grounding, (448, 336))
    assert text == (
        "A <|object_ref_start|>hypodense lesion<|object_ref_end|><|box_start|>(45,84),(224,336)<|box_end|> "
        "in the liver; <|box_start|>(0,0),(448,336)<|box_end|>."
    )
    # back on the grid, each corner within one pixel's worth of grid steps of where it was
    back = parse_boxes(from_model(text, PIXEL_FAMILY.grounding, (448, 336)))
    for found, original in zip(back, parse_boxes(GROUNDED), strict=True):
        assert found.phrase == original.phrase
        for got, want, side in zip(
            found.box.as_list(), original.box.as_list(), (448, 336, 448, 336), strict=True
        ):
            assert abs(got - want) <= GRID / side / 2 + 1


def test_a_pixel_corner_beyond_the_image_is_clipped_to_its_edge():
    text = "<|box_start|>(10,20),(900,500)<|box_end|>"
    assert (
        from_model(text, PIXEL_FAMILY.grounding, (448, 336)) == "<|box_start|>(22,60),(1000,1000)<|box_end|>"
    )


def test_grid_families_keep_their_text_unchanged():
    for family in FAMILIES.values():
        if not family.grounding.absolute:
            assert to_model(GROUNDED, family.grounding, (448, 336)) == GROUNDED
            assert from_model(GROUNDED, family.grounding, None) == GROUNDED
            assert (
                messages_to_model([{"role": "user", "content": GROUNDED}], family.grounding, None)[0][
                    "content"
                ]
                == GROUNDED
            )
    assert [f.model_type for f in FAMILIES.values() if f.grounding.absolute] == ["qwen2_5_vl"]


def test_without_one_image_a_pixel_family_gets_phrases_without_boxes():
    """No frame the corners could be pixels of: the phrase stays, no box is read in a wrong frame."""
    assert to_model(GROUNDED, PIXEL_FAMILY.grounding, None) == "A hypodense lesion in the liver;."
    assert from_model(GROUNDED, PIXEL_FAMILY.grounding, None) == strip_grounding(GROUNDED)


def test_messages_convert_every_text_and_leave_images_alone():
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": GROUNDED}]},
        {"role": "assistant", "content": GROUNDED},
    ]
    converted = messages_to_model(messages, PIXEL_FAMILY.grounding, (448, 336))
    expected = to_model(GROUNDED, PIXEL_FAMILY.grounding, (448, 336))
    assert converted[0]["content"] == [{"type": "image"}, {"type": "text", "text": expected}]
    assert converted[1] == {"role": "assistant", "content": expected}
    assert messages[1]["content"] == GROUNDED  # the caller's messages are not changed
