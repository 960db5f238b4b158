"""The options of the image path and of reading CT inputs: each default and its help, written once.

Torch-free on purpose: the CLI reads these defaults and help texts when it defines its commands, and
``ctscribe --help`` must not load transformers (whose resize :mod:`ctscribe.ct.images` uses) to
show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The default budget (and its reasons) is owned by the settings a model carries.
from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from ctscribe.models import SMALLEST_TOKEN_PIXELS


@dataclass(frozen=True)
class ImageOptions:
    """How :func:`ctscribe.ct.images.prepare_image` treats an image; training and inference must use
    the same options."""

    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={
            "help": f"Pixel budget per image; the default, {DEFAULT_MAX_PIXELS:,}, is ~324 image tokens."
        },
    )
    min_pixels: int = DEFAULT_MIN_PIXELS
    roi_box: Literal["keep", "remove"] = field(
        default="remove",
        metadata={
            "help": "MedTrinity's drawn green ROI box: remove (inpaint) or keep it "
            "(keep: no grounded answers)."
        },
    )
    crop_background: bool = field(default=True, metadata={"help": "Crop the black air around the body."})

    def __post_init__(self) -> None:
        if self.roi_box not in ("keep", "remove"):
            raise ValueError(f"roi_box must be 'keep' or 'remove', not {self.roi_box!r}")
        if not SMALLEST_TOKEN_PIXELS <= self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"need {SMALLEST_TOKEN_PIXELS} <= min_pixels <= max_pixels, "
                f"got {self.min_pixels} and {self.max_pixels}"
            )


@dataclass(frozen=True)
class InputOptions:
    """How :func:`ctscribe.ct.inputs.iter_inputs` turns DICOM and NIfTI into images: the window and
    which slices."""

    window: str = field(
        default="auto",
        metadata={
            "help": "CT window for DICOM/NIfTI: auto, a preset (lung, mediastinum, bone, brain, soft-tissue, "
            "liver, ...) or WIDTH/LEVEL in HU such as 400/50."
        },
    )
    slices: str = field(
        default="middle", metadata={"help": "Volumes and series: middle, all, or every:K (every K-th slice)."}
    )
