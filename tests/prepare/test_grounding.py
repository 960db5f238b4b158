"""Where the ROI box goes in an answer: after the caption's region-of-interest phrase, or closing it."""

import pytest

from ctscribe.conversation.boxes import GridBox, format_box, parse_boxes, strip_grounding
from ctscribe.prepare.grounding import ground_caption, roi_sentence, unground

BOX = GridBox(120, 340, 560, 780)


def test_the_box_follows_medtrinitys_region_of_interest_phrase(real_caption):
    grounded = ground_caption(real_caption, BOX)
    assert format_box(BOX, "The region of interest") + ", located centrally" in grounded
    assert grounded.count("<|box_start|>") == 1
    (found,) = parse_boxes(grounded)
    assert (found.phrase, found.box) == ("The region of interest", BOX)
    # A reader (or a text metric) with the markup stripped sees the caption unchanged.
    assert strip_grounding(grounded) == real_caption


def test_only_the_first_phrase_is_grounded_and_the_area_of_interest_counts():
    caption = "CT of the liver. The area of interest is hypodense. The region of interest may grow."
    grounded = ground_caption(caption, BOX)
    first = format_box(BOX, "The area of interest")
    assert grounded.startswith(f"CT of the liver. {first} is hypodense.")
    assert grounded.endswith("The region of interest may grow.")


@pytest.mark.parametrize(
    ("caption", "closing"),
    [
        ("CT of the chest. A lesion is present on the left side.", " " + roi_sentence(BOX, "en")),
        ("胸部CT。左侧可见病变。", roi_sentence(BOX, "zh")),
    ],
)
def test_a_caption_without_the_phrase_gets_a_closing_sentence_in_its_language(caption, closing):
    assert ground_caption(caption, BOX) == caption + closing
    assert closing.strip().endswith(("<|box_end|>.", "<|box_end|>。"))
    assert ("感兴趣区域" in closing) == ("。" in caption)


def test_a_chinese_caption_grounds_its_own_phrase():
    caption = "头部CT平扫。感兴趣区域位于图像左侧，呈高密度。"
    grounded = ground_caption(caption, BOX)
    assert grounded == "头部CT平扫。" + format_box(BOX, "感兴趣区域") + "位于图像左侧，呈高密度。"


@pytest.mark.parametrize(
    "caption",
    [
        "CT of the chest. A lesion is present on the left side.",
        "胸部CT。左侧可见病变。",
        "头部CT平扫。感兴趣区域位于图像左侧，呈高密度。",
        "The image is a CT of the brain. The region of interest, located centrally, is dense.",
    ],
)
def test_unground_gives_back_the_caption_and_the_box(caption):
    assert unground(ground_caption(caption, BOX)) == (caption, BOX)
    assert unground(caption) == (caption, None)
