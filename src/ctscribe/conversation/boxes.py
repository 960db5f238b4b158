"""The grounding format: where a finding is, as text the model can learn and write.

A base family is pre-trained to point at things in its own text (``GroundingFormat`` in
``ctscribe.models``): a phrase between reference markers, then a box between box markers, its integer
corners on a grid of the image the model sees, x before y, top-left then bottom-right. The markers are
special tokens, so decoding with ``skip_special_tokens=True`` silently drops them and leaves bare
numbers: every engine that wants boxes decodes keeping them and strips the markup here instead.

Records are written by prepare, before any base is chosen, so boxes at rest (records, predictions,
the API) are on the default family's 0-1000 grid (``models.DEFAULT_FAMILY.grounding``). A family that
writes its corners in pixels of the image it sees (``GroundingFormat.absolute``) gets them converted at
the model's edge: :func:`to_model` as a sample or prompt is rendered, :func:`from_model` as an answer is
decoded. This module is the one place that writes, reads, converts and removes the format. A box on the
grid is a
:class:`GridBox`; pixel boxes are ``(x0, y0, x1, y1)`` *inclusive* pixel indices of the drawn
outline's outer edge, as ``ctscribe.ct.images.find_roi_box`` returns them, so the outer edge on the
right/bottom is ``x1 + 1`` / ``y1 + 1``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ctscribe.models import DEFAULT_FAMILY
from ctscribe.models.family import GroundingFormat

_FORMAT = DEFAULT_FAMILY.grounding
OBJECT_REF_START = _FORMAT.ref_start
OBJECT_REF_END = _FORMAT.ref_end
BOX_START = _FORMAT.box_start
BOX_END = _FORMAT.box_end
GROUNDING_TOKENS = (OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END)
GRID = _FORMAT.grid
# What a reader sees where a box was: the phrase stays, the box becomes its number on the image.
READER_MARKER = "[box {n}]"

PixelBox = tuple[int, int, int, int]

_NUMBER = r"\s*(\d{1,4})\s*"
_BOX = (
    re.escape(BOX_START)
    + rf"\s*\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)\s*"
    + re.escape(BOX_END)
)
# A box's four numbers, with what surrounds them kept as written (the conversions replace the numbers only).
_BOX_NUMBERS = re.compile(
    rf"({re.escape(BOX_START)}\s*\(){_NUMBER},{_NUMBER}(\)\s*,\s*\(){_NUMBER},{_NUMBER}(\)\s*{re.escape(BOX_END)})"
)
_REF = re.escape(OBJECT_REF_START) + r"(.*?)" + re.escape(OBJECT_REF_END)
# A box with the phrase it belongs to, or a bare box; then any markup left over (an unclosed or
# malformed span), which must never reach a reader or a text metric.
_GROUNDED = re.compile(rf"(?:{_REF}\s*)?{_BOX}", re.DOTALL)
_LEFTOVER = re.compile("|".join(re.escape(token) for token in GROUNDING_TOKENS))


@dataclass(frozen=True)
class GridBox:
    """A box on the 0-1000 grid: ``x0 <= x1`` and ``y0 <= y1``, all within [0, 1000]."""

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
    """``phrase`` grounded by ``box`` in the grounding format (a bare box when there is no phrase)."""
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
    use the default "" so that references and predictions compare as plain captions. Only boxes that
    :func:`parse_boxes` reads are numbered, so "[box n]" is the n-th box it returns; a malformed box
    (off the grid, inverted) leaves its phrase alone.
    """
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        phrase = (match.group(1) or "").strip()
        if not parse_boxes(match.group(0)):
            return phrase
        count += 1
        label = marker.format(n=count) if marker else ""
        return " ".join(part for part in (phrase, label) if part)

    stripped = _LEFTOVER.sub("", _GROUNDED.sub(replace, text))
    return re.sub(r"[ \t]{2,}", " ", stripped).replace(" .", ".").replace(" ,", ",").strip()


def _rescale(text: str, grounding: GroundingFormat, size: tuple[int, int] | None, to_pixels: bool) -> str:
    """Every box's corners between the 0-1000 grid and pixels of a ``size`` (width, height) image."""
    if not grounding.absolute or BOX_START not in text:
        return text
    if (grounding.ref_start, grounding.ref_end, grounding.box_start, grounding.box_end) != GROUNDING_TOKENS:
        raise NotImplementedError("a grounding format with other marker tokens than the default family's")
    if size is None:
        # No one image the corners could be pixels of (a text-only turn, several images): the phrase
        # stays and the box goes, rather than a box read in the wrong frame.
        return strip_grounding(text)

    def scale(value: str, side: int) -> str:
        if to_pixels:
            return str(min(side, max(0, round(int(value) * side / GRID))))
        return str(min(GRID, max(0, round(int(value) * GRID / side))))

    def replace(match: re.Match[str]) -> str:
        opening, x0, y0, middle, x1, y1, closing = match.groups()
        width, height = size
        return (
            f"{opening}{scale(x0, width)},{scale(y0, height)}{middle}{scale(x1, width)},{scale(y1, height)}"
            f"{closing}"
        )

    return _BOX_NUMBERS.sub(replace, text)


def one_frame(sizes: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The frame pixel corners are about: the size of a conversation's one image; None with no image
    or several, where no box can be written in pixels (:func:`to_model` keeps the phrases alone)."""
    return sizes[0] if len(sizes) == 1 else None


def to_model(text: str, grounding: GroundingFormat, size: tuple[int, int] | None) -> str:
    """``text``, its boxes on the 0-1000 grid, as a family of ``grounding`` writes it about an image
    the model sees at ``size`` (width, height after the resize; None: no one image). Unchanged for a
    grid family."""
    return _rescale(text, grounding, size, to_pixels=True)


def from_model(text: str, grounding: GroundingFormat, size: tuple[int, int] | None) -> str:
    """What a family of ``grounding`` wrote about an image it saw at ``size``, with its boxes on the
    0-1000 grid again (:func:`to_model`'s inverse up to its rounding to whole pixels). Unchanged for a
    grid family."""
    return _rescale(text, grounding, size, to_pixels=False)


def messages_to_model(
    messages: list[dict], grounding: GroundingFormat, size: tuple[int, int] | None
) -> list[dict]:
    """Chat messages (string content, or text and image parts) with :func:`to_model` applied to every text."""
    if not grounding.absolute:
        return messages

    def convert(content):
        if isinstance(content, str):
            return to_model(content, grounding, size)
        return [
            {**part, "text": to_model(part["text"], grounding, size)} if part.get("type") == "text" else part
            for part in content
        ]

    return [{**message, "content": convert(message["content"])} for message in messages]


def box_iou(a: GridBox, b: GridBox) -> float:
    """Intersection over union of two grid boxes (0.0 when both are empty)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(0, width) * max(0, height)
    union = a.area + b.area - inter
    return inter / union if union else 0.0


# ---------------------------------------------------------------------------------------------
# Answers for a reader: boxes in the user's own image, text without markup


@dataclass(frozen=True)
class ImageFrame:
    """Where the image the model saw lies in the image the user gave (``width`` x ``height``).

    :func:`ctscribe.ct.images.prepare_image` (whose ``PreparedImage.frame`` is this) cuts ``crop``
    (left, upper, right, lower, as ``Image.crop`` takes it; None when nothing was cut) out of the
    user's image and resizes that crop to the model's frame. A grid box is a fraction of the model's
    frame, which is exactly the crop, so it maps to the user's pixels through the crop alone: the
    resize drops out, and no rounding to the model's smaller pixels is added on the way.
    """

    width: int
    height: int
    crop: tuple[int, int, int, int] | None = None

    def to_pixels(self, box: GridBox) -> PixelBox:
        """The inclusive pixel box, in the user's image, of a box on the model's 0-1000 grid."""
        left, upper, right, lower = self.crop or (0, 0, self.width, self.height)
        x0, y0, x1, y1 = to_pixels(box, right - left, lower - upper)
        return x0 + left, y0 + upper, x1 + left, y1 + upper


@dataclass(frozen=True)
class Located:
    """A box of an answer: its phrase, its place on the model's grid and in the user's pixels."""

    phrase: str
    grid: GridBox
    pixels: PixelBox | None  # None when the answer's image is not known (a text-only conversation)

    def as_dict(self) -> dict:
        """The JSON form predict writes and the API returns (``box_pixels`` inclusive, x before y)."""
        pixels = list(self.pixels) if self.pixels is not None else None
        return {"phrase": self.phrase, "box_1000": self.grid.as_list(), "box_pixels": pixels}


def locate(text: str, frame: ImageFrame | None) -> list[Located]:
    """Every box in ``text``, numbered as :func:`reader_text` numbers them, placed in ``frame``."""
    return [
        Located(found.phrase, found.box, frame.to_pixels(found.box) if frame else None)
        for found in parse_boxes(text)
    ]


def settled(text: str) -> str:
    """``text`` up to a grounding span that has begun but not yet ended.

    While an answer streams, a phrase or box arrives a token at a time; what a reader is shown must
    stop before it, so the readable text only ever grows (:func:`reader_text` of each settled prefix
    extends the last one).
    """
    closed = text.rfind(BOX_END)
    opened = [at for at in (text.rfind(OBJECT_REF_START), text.rfind(BOX_START)) if at > closed]
    return text[: min(opened)] if opened else text


def reader_text(text: str) -> str:
    """What a reader is shown: each grounded phrase followed by its box's number ("[box 1]"); a text
    without markup is shown exactly as written."""
    if not _LEFTOVER.search(text):
        return text
    return strip_grounding(text, READER_MARKER)
