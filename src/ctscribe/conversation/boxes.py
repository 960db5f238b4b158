"""Qwen2-VL's grounding format: where a finding is, as text the model can learn and write.

Qwen2-VL was pre-trained to point at things with
``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>``: integer
corners on a 0-1000 grid of the image the model sees, x before y, top-left then bottom-right. Those
four markers are special tokens (ids 151646-151649 in the Qwen2 tokenizer), so decoding with
``skip_special_tokens=True`` silently drops them and leaves bare numbers: every engine that wants boxes
decodes keeping them and strips the markup here instead.

This module is the one place that writes, reads and removes the format. A box on the grid is a
:class:`GridBox`; pixel boxes are ``(x0, y0, x1, y1)`` *inclusive* pixel indices of the drawn
outline's outer edge, as ``ctscribe.data.images.find_roi_box`` returns them, so the outer edge on the
right/bottom is ``x1 + 1`` / ``y1 + 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OBJECT_REF_START = "<|object_ref_start|>"
OBJECT_REF_END = "<|object_ref_end|>"
BOX_START = "<|box_start|>"
BOX_END = "<|box_end|>"
GROUNDING_TOKENS = (OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END)
GRID = 1000

PixelBox = tuple[int, int, int, int]

_NUMBER = r"\s*(\d{1,4})\s*"
_BOX = (
    re.escape(BOX_START)
    + rf"\s*\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)\s*"
    + re.escape(BOX_END)
)
_REF = re.escape(OBJECT_REF_START) + r"(.*?)" + re.escape(OBJECT_REF_END)
# A box with the phrase it belongs to, or a bare box; then any markup left over (an unclosed or
# malformed span), which must never reach a reader or a text metric.
_GROUNDED = re.compile(rf"(?:{_REF}\s*)?{_BOX}", re.DOTALL)
_LEFTOVER = re.compile("|".join(re.escape(token) for token in GROUNDING_TOKENS))


@dataclass(frozen=True)
class GridBox:
    """A box on Qwen2-VL's 0-1000 grid: ``x0 <= x1`` and ``y0 <= y1``, all within [0, 1000]."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if not (0 <= self.x0 <= self.x1 <= GRID and 0 <= self.y0 <= self.y1 <= GRID):
            raise ValueError(f"not a box on the 0-{GRID} grid: {self.as_list()}")

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


@dataclass(frozen=True)
class Grounding:
    """One box found in a text, with the phrase it was attached to ("" for a bare box)."""

    phrase: str
    box: GridBox


def to_grid(box: PixelBox, width: int, height: int) -> GridBox:
    """The 0-1000 grid box of an inclusive pixel box in a ``width`` x ``height`` image (outer edge)."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height):
        raise ValueError(f"pixel box {box} is not inside a {width}x{height} image")

    def scale(value: int, side: int) -> int:
        return min(GRID, max(0, round(value * GRID / side)))

    return GridBox(scale(x0, width), scale(y0, height), scale(x1 + 1, width), scale(y1 + 1, height))


def to_pixels(box: GridBox, width: int, height: int) -> PixelBox:
    """The inclusive pixel box ``box`` covers in a ``width`` x ``height`` image; inverts :func:`to_grid`."""

    def scale(value: int, side: int) -> int:
        return min(side, max(0, round(value * side / GRID)))

    x0, y0 = min(scale(box.x0, width), width - 1), min(scale(box.y0, height), height - 1)
    x1 = min(width - 1, max(x0, scale(box.x1, width) - 1))
    y1 = min(height - 1, max(y0, scale(box.y1, height) - 1))
    return x0, y0, x1, y1


def format_box(box: GridBox, phrase: str = "") -> str:
    """``phrase`` grounded by ``box`` in Qwen2-VL's format (a bare box when there is no phrase)."""
    ref = f"{OBJECT_REF_START}{phrase}{OBJECT_REF_END}" if phrase else ""
    return f"{ref}{BOX_START}({box.x0},{box.y0}),({box.x1},{box.y1}){BOX_END}"


def parse_boxes(text: str) -> list[Grounding]:
    """Every well-formed box in ``text``, in order; boxes outside the grid or inverted are skipped."""
    found = []
    for match in _GROUNDED.finditer(text):
        phrase, *numbers = match.groups()
        try:
            found.append(Grounding((phrase or "").strip(), GridBox(*(int(n) for n in numbers))))
        except ValueError:
            continue
    return found


def strip_grounding(text: str, marker: str = "") -> str:
    """``text`` without grounding markup: each grounded phrase stays, its box becomes ``marker``.

    ``marker`` may hold ``{n}``, the box's number counted from 1 (a reader's "[box 1]"); text metrics
    use the default "" so that references and predictions compare as plain captions.
    """
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        phrase = (match.group(1) or "").strip()
        label = marker.format(n=count) if marker else ""
        return " ".join(part for part in (phrase, label) if part)

    stripped = _LEFTOVER.sub("", _GROUNDED.sub(replace, text))
    return re.sub(r"[ \t]{2,}", " ", stripped).replace(" .", ".").replace(" ,", ",").strip()


def box_iou(a: GridBox, b: GridBox) -> float:
    """Intersection over union of two grid boxes (0.0 when both are empty)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(0, width) * max(0, height)
    union = a.area + b.area - inter
    return inter / union if union else 0.0
