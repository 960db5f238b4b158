"""Boxes at a generation engine's edge: the 0-1000 grid in and out, the family's own convention inside.

Everything around an engine (records, prompts a user or ``evaluate`` writes, predictions, the API, the
page) keeps boxes on the 0-1000 grid (:mod:`ctscribe.conversation.boxes`). A family whose boxes are
pixels of the image it sees (``GroundingFormat.absolute``) gets its prompt's boxes in those pixels and
its answer's boxes back on the grid; for a grid family both steps change nothing. The image it sees
is the request's one image, already at the model's size (``GenerationRequest.images``); a request
with no image or several has no one frame, and its boxes become plain phrases
(:func:`ctscribe.conversation.boxes.to_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ctscribe.conversation.boxes import from_model, messages_to_model, one_frame, settled
from ctscribe.models.family import GroundingFormat

# ``ctscribe.generate.engine``'s GenerationRequest and GenerationResult, which import this module.
Request = TypeVar("Request")
Result = TypeVar("Result")


def _frame(request: Any) -> tuple[int, int] | None:
    return one_frame([image.size for image in request.images])


class _GridStream:
    """Passes a streamed answer on with its boxes on the grid: only text up to a box still being
    written is converted and sent (:func:`~ctscribe.conversation.boxes.settled`), so the pieces sent
    add up to a prefix of the converted final text, as the streaming contract asks."""

    def __init__(self, on_text: Callable[[str], None], grounding: GroundingFormat, frame) -> None:
        self.on_text, self.grounding, self.frame = on_text, grounding, frame
        self.model_text, self.sent = "", ""

    def __call__(self, piece: str) -> None:
        self.model_text += piece
        text = from_model(settled(self.model_text), self.grounding, self.frame)
        if len(text) > len(self.sent):
            self.on_text(text[len(self.sent) :])
            self.sent = text


def to_family(requests: Sequence[Request], grounding: GroundingFormat) -> list[Request]:
    """``requests`` with their messages' boxes in ``grounding``'s convention, and an ``on_text`` that
    passes the streamed answer on with its boxes back on the grid; the same requests for a grid family."""
    if not grounding.absolute:
        return list(requests)
    converted = []
    for request in requests:
        frame = _frame(request)
        on_text = request.on_text and _GridStream(request.on_text, grounding, frame)
        messages = messages_to_model(request.messages, grounding, frame)
        converted.append(dataclasses.replace(request, messages=messages, on_text=on_text))
    return converted


def to_grid(
    results: Sequence[Result], requests: Sequence[Request], grounding: GroundingFormat
) -> list[Result]:
    """``results`` of ``requests`` with their boxes back on the 0-1000 grid."""
    if not grounding.absolute:
        return list(results)
    return [
        dataclasses.replace(result, text=from_model(result.text, grounding, _frame(request)))
        for result, request in zip(results, requests, strict=True)
    ]
