"""Where the region-of-interest box goes in a training answer, and how to take it out again.

MedTrinity's captions name their region of interest ("The region of interest, located centrally
...", "感兴趣区域位于 ..."), and the green box drawn into the image marks it. The model grounds a phrase
by following it with its box (:mod:`ctscribe.conversation.boxes`), so the box goes right after the
first region-of-interest phrase, which becomes the grounded phrase: "<|object_ref_start|>The region
of interest<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>, located centrally ...". A
caption that names no region of interest gets the box as a closing sentence in its own language
(:func:`roi_sentence`), which is also the answer to the dialogue's "Where is the region of interest?".

:func:`unground` is the exact inverse, so a grounded record gives back its caption and box (what
``ctscribe translate`` needs to re-ground a Chinese caption with the English record's box).
"""

from __future__ import annotations

import re

from ctscribe.conversation.boxes import GridBox, format_box, parse_boxes
from ctscribe.text import is_chinese

# The phrase MedTrinity uses for its box ("The region of interest", "the area of interest") and its
# Chinese forms (感兴趣区域, 感兴趣区, 感兴趣的区域).
ROI_PHRASE = re.compile(r"\b(?:the\s+)?(?:region|area)\s+of\s+interest\b|感兴趣的?区域?", re.IGNORECASE)
ROI_NOUN = {"en": "The region of interest", "zh": "感兴趣区域"}
FULL_STOP = {"en": ".", "zh": "。"}


def caption_language(caption: str) -> str:
    """``zh`` for a Chinese caption, else ``en``: the language a closing sentence is written in."""
    return "zh" if is_chinese(caption) else "en"


def roi_sentence(box: GridBox, language: str) -> str:
    """The phrase "The region of interest" (or 感兴趣区域) grounded by ``box``, as a sentence."""
    return format_box(box, ROI_NOUN[language]) + FULL_STOP[language]


def _joiner(language: str) -> str:
    return "" if language == "zh" else " "


def ground_caption(caption: str, box: GridBox) -> str:
    """``caption`` with ``box`` after its first region-of-interest phrase, or closing it."""
    match = ROI_PHRASE.search(caption)
    if match:
        return caption[: match.start()] + format_box(box, match.group(0)) + caption[match.end() :]
    language = caption_language(caption)
    return caption.rstrip() + _joiner(language) + roi_sentence(box, language)


def unground(answer: str) -> tuple[str, GridBox | None]:
    """The caption and box :func:`ground_caption` made ``answer`` from; ``(answer, None)`` if none."""
    found = parse_boxes(answer)
    if not found:
        return answer, None
    box = found[0].box
    language = caption_language(answer)
    closing = _joiner(language) + roi_sentence(box, language)
    if answer.endswith(closing):
        return answer[: -len(closing)], box
    return answer.replace(format_box(box, found[0].phrase), found[0].phrase, 1), box
