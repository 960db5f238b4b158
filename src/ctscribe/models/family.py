"""The protocol every model family implements: plain values and functions in frozen dataclasses.

One module per family (``models/<model_type>.py``) builds one :class:`Family`; nothing else in
ctscribe knows a family's names or numbers. Torch-free: a family's functions import torch and
transformers when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class UnsupportedModelError(ValueError):
    """A checkpoint of no supported family (the CLI prints a ValueError as one line)."""


@dataclass(frozen=True)
class ImageGrid:
    """How a family turns pixels into image tokens: ``patch``-px ViT patches merged ``merge`` x ``merge``
    into one token, after its processor's own resize to multiples of :attr:`token_side`."""

    patch: int
    merge: int
    # (height, width, min_pixels, max_pixels) -> (height, width): the processor's resize, exactly.
    resize: Callable[[int, int, int, int], tuple[int, int]]
    max_aspect_ratio: int  # the resize refuses more extreme shapes

    @property
    def token_side(self) -> int:
        """Pixels per image token side."""
        return self.patch * self.merge

    def tokens(self, width: int, height: int) -> int:
        """Image tokens of an image already at a size the resize picks (multiples of the token side)."""
        return (width // self.token_side) * (height // self.token_side)


@dataclass(frozen=True)
class ChatTemplate:
    """A family's chat template written out, with the character spans of the answers.

    ``render(messages, image_placeholder)`` returns the text ``apply_chat_template`` would give (no
    generation prompt) and the spans the loss is taken on; each placeholder becomes one ``image_pad``
    (training repeats it to the image's token count). ``pad`` pads batches; ``video_pad`` marks video
    tokens for the model's position rule.
    """

    image_pad: str
    video_pad: str
    pad: str
    default_system: str | None  # the system turn added to a conversation without one (None: none)
    render: Callable[[list[dict], str], tuple[str, list[tuple[int, int]]]]


@dataclass(frozen=True)
class GroundingFormat:
    """How a family writes a box as text: ``ref_start phrase ref_end box_start (x0,y0),(x1,y1) box_end``
    with corners on a ``grid`` x ``grid`` lattice of the image the model sees, or, when ``absolute``,
    in pixels of that image (after the processor's resize) instead."""

    ref_start: str
    ref_end: str
    box_start: str
    box_end: str
    grid: int
    absolute: bool = False


@dataclass(frozen=True)
class Family:
    """One model family: every family-specific rule ctscribe acts on, as values and functions.

    Functions that need torch or transformers import them when called.
    """

    model_type: str  # config.json's ``model_type``
    name: str  # how docs and messages name it
    example_checkpoint: str  # a Hub id of an instruction-tuned checkpoint
    llamafactory_template: str  # LLaMA-Factory's ``template`` for this family
    model_class: Callable[[], type]  # the transformers class that loads and generates
    # The wrapped model's inner model (``model.model``), whose forward embeds images and whose
    # position rule the packed rows use; the vision tower within it, and the projector's prefixes inside
    # the tower (frozen apart from the tower, trained alone through PEFT's ``modules_to_save``).
    core: Callable[[Any], Any]
    vision_tower: Callable[[Any], Any]
    tower_name: str
    projector_names: tuple[str, ...]
    lora_pattern: Callable[[tuple[str, ...]], str]  # a PEFT regex over the language model's linear layers
    language_linear: tuple[str, ...]  # every linear layer name of the language model (``lora_target: all``)
    # (core, input_ids, image_grid_thw, **extra) -> (3, 1, length) positions of one unpacked sample
    rope_index: Callable[..., Any]
    merged_tokens: Callable[[Any, Any], Any]  # (tower, grid_thw) -> image tokens per image after merging
    grid: ImageGrid
    template: ChatTemplate
    grounding: GroundingFormat
    # Recipe switches this family cannot honour, each with the reason: ``auto`` turns such a switch off
    # with one log line, ``true`` is refused (ctscribe.train.family_limits).
    limits: Mapping[str, str] = field(default_factory=dict)
