"""CT window presets and windowing: Hounsfield units in, the 8-bit grey a radiologist would look at out.

A CT slice spans about -1000 HU (air) to +3000 HU (dense bone, metal), but a screen shows 256 greys,
so every reading picks a *window*: a width W and a level (centre) L, mapping L - W/2 .. L + W/2 to
black .. white. Which window matters as much as the slice: brain tissue is invisible in a lung window
and lung parenchyma is solid black in a brain window. MedTrinity's images were exported by their
sources in a reading window, so the model must be shown DICOM and NIfTI inputs windowed the same way.

``auto`` picks the window a radiologist would open a slice in first (:func:`choose_auto_window`):

1. From the body part the header names (BodyPartExamined, else a keyword of a description):
   head / brain -> brain; neck -> head-neck; chest / lung / thorax -> lung (the only window in which
   lung parenchyma, where most chest findings are, is visible at all; the mediastinum stays readable
   in it, if coarsely); abdomen / pelvis / liver / pancreas / kidney -> soft-tissue (general abdominal
   reading; the narrow liver window is for hunting liver lesions); spine and limbs -> bone (their
   usual question is a fracture). Words that point to different windows ("chest abdomen pelvis") or
   to none (WHOLEBODY) decide nothing.
2. Else from the slice's HU histogram inside the body (the largest connected region above -500 HU,
   holes filled, so air in the lungs and bowel counts as inside): at least 15% of it between -950 and
   -500 HU is aerated lung -> lung; a ring of bone (> 300 HU) enclosing at least 30% of the body, at
   least 60% of it between 0 and 80 HU (grey and white matter, CSF), is a skull around a brain ->
   brain; anything else -> soft-tissue, the window in which most of the body is readable.

The thresholds were checked on the real CT slices in pydicom and pydicom-data (head, neck, spine,
abdomen) and on synthetic chest and head phantoms in the tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

# name -> (width, level) in HU, the usual reading windows.
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (80, 40),
    "subdural": (200, 75),
    "stroke": (40, 40),
    "temporal-bone": (2800, 600),
    "head-neck": (350, 40),
    "lung": (1500, -600),
    "mediastinum": (350, 50),
    "soft-tissue": (400, 50),  # abdomen soft tissue
    "liver": (150, 30),
    "spine": (250, 50),  # spine soft tissue
    "bone": (1800, 400),
}
AUTO = "auto"
CUSTOM = "custom"

# Words of BodyPartExamined (DICOM defined terms) and of descriptions -> preset. Multi-region terms
# (CHESTABDOMEN, WHOLEBODY) are absent on purpose: the histogram decides those slice by slice.
BODY_PART_PRESETS: dict[str, str] = {
    **dict.fromkeys(("HEAD", "BRAIN", "SKULL", "CEREBRAL"), "brain"),
    **dict.fromkeys(("NECK", "HEADNECK", "LARYNX", "PHARYNX"), "head-neck"),
    **dict.fromkeys(("CHEST", "LUNG", "LUNGS", "THORAX"), "lung"),
    **dict.fromkeys(
        ("ABDOMEN", "ABD", "ABDOMINAL", "ABDOMENPELVIS", "PELVIS", "LIVER", "PANCREAS", "KIDNEY", "RENAL"),
        "soft-tissue",
    ),
    **dict.fromkeys(
        ("SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "EXTREMITY", "HIP", "KNEE", "ANKLE", "FOOT"),
        "bone",
    ),
    **dict.fromkeys(("SHOULDER", "ELBOW", "WRIST", "HAND", "FEMUR", "TIBIA", "HUMERUS"), "bone"),
}

BODY_MIN_HU = -500.0  # above this is tissue; the body is the largest such region
LUNG_HU = (-950.0, -500.0)  # aerated lung parenchyma
LUNG_MIN_SHARE = 0.15
BONE_MIN_HU = 300.0
BRAIN_HU = (0.0, 80.0)  # CSF, grey and white matter
SKULL_MIN_ENCLOSED = 0.30  # share of the body inside the bone ring
BRAIN_MIN_SHARE = 0.60  # share of the enclosed region in BRAIN_HU

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_WIDTH_LEVEL = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class WindowSpec:
    """A parsed ``--window``: ``auto`` (width and level None), a preset, or ``custom`` numbers."""

    name: str
    width: float | None = None
    level: float | None = None

    @property
    def label(self) -> str:
        """How outputs name the window: ``lung 1500/-600``, ``400/50`` or ``auto``."""
        if self.width is None or self.level is None:
            return self.name
        numbers = f"{self.width:g}/{self.level:g}"
        return numbers if self.name == CUSTOM else f"{self.name} {numbers}"


class AutoWindow(NamedTuple):
    """What ``auto`` chose for a slice, and the reason predict writes next to its output."""

    name: str
    width: float
    level: float
    reason: str


def _choices() -> str:
    return f"'{AUTO}', a preset ({', '.join(PRESETS)}) or WIDTH/LEVEL in HU such as 400/50 or 1500/-600"


def parse_window(spec: str) -> WindowSpec:
    """``auto``, a preset name (case and ``_``/space insensitive) or ``WIDTH/LEVEL``; ValueError if not."""
    name = spec.strip().lower().replace("_", "-").replace(" ", "-")
    if name == AUTO:
        return WindowSpec(AUTO)
    if name in PRESETS:
        width, level = PRESETS[name]
        return WindowSpec(name, float(width), float(level))
    match = _WIDTH_LEVEL.match(spec)
    if match is None:
        raise ValueError(f"unknown window {spec!r}: expected {_choices()}")
    width, level = float(match.group(1)), float(match.group(2))
    if not (math.isfinite(width) and math.isfinite(level)) or width < 1:
        raise ValueError(f"bad window {spec!r}: the width must be at least 1 HU")
    return WindowSpec(CUSTOM, width, level)


def apply_window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU to 0..255 with DICOM's linear VOI function (PS3.3 C.11.2.1.2.1), rounded to nearest.

    With c = level and w = width::

        hu <= c - 0.5 - (w - 1) / 2  -> 0
        hu >  c - 0.5 + (w - 1) / 2  -> 255
        otherwise                    -> ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255

    The same function DICOM viewers use, so an image here matches what a clinician sees for the same
    width and level. ``np.rint`` rounds halves to even; NaN (no data) maps to 0.
    """
    if width < 1:
        raise ValueError(f"window width must be at least 1 HU, not {width}")
    values = np.nan_to_num(np.asarray(hu, dtype=np.float64), nan=-np.inf)
    low = level - 0.5 - (width - 1) / 2
    high = level - 0.5 + (width - 1) / 2
    if width == 1:  # a threshold: the linear part is empty
        return np.where(values > high, 255, 0).astype(np.uint8)
    linear = ((values - (level - 0.5)) / (width - 1) + 0.5) * 255
    out = np.where(values <= low, 0.0, np.where(values > high, 255.0, linear))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def find_body_part(text: str | None) -> str | None:
    """The word of ``text`` that names a body part with a preset, if all such words agree on one preset.

    Returns a word of :data:`BODY_PART_PRESETS` (never other text), so a description can steer the
    window without any of its free text leaving the DICOM reader.
    """
    if not text:
        return None
    words = [word for word in re.findall(r"[A-Z]+", text.upper()) if word in BODY_PART_PRESETS]
    if len({BODY_PART_PRESETS[word] for word in words}) != 1:
        return None
    return words[0]


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _from_histogram(hu: np.ndarray) -> tuple[str, str]:
    """(preset, reason) from the HU histogram inside the body; see the module docstring."""
    tissue = ndimage.binary_opening(hu > BODY_MIN_HU, iterations=2)  # drop noise and thin table lines
    body = ndimage.binary_fill_holes(_largest_region(tissue))
    if not body.any():
        return "soft-tissue", "HU histogram: no body found"
    inside = hu[body]
    lung = float(np.mean((inside >= LUNG_HU[0]) & (inside <= LUNG_HU[1])))
    lung_text = f"{lung:.0%} of body pixels between {LUNG_HU[0]:g} and {LUNG_HU[1]:g} HU"
    if lung >= LUNG_MIN_SHARE:
        return "lung", f"HU histogram: {lung_text}"
    bone = body & (hu > BONE_MIN_HU)
    enclosed = ndimage.binary_fill_holes(bone) & ~bone
    enclosed_share = float(enclosed.sum() / body.sum())
    if enclosed_share >= SKULL_MIN_ENCLOSED:
        values = hu[enclosed]
        brain = float(np.mean((values >= BRAIN_HU[0]) & (values <= BRAIN_HU[1])))
        if brain >= BRAIN_MIN_SHARE:
            return "brain", (
                f"HU histogram: bone encloses {enclosed_share:.0%} of the body, "
                f"{brain:.0%} of it between {BRAIN_HU[0]:g} and {BRAIN_HU[1]:g} HU"
            )
    return "soft-tissue", f"HU histogram: {lung_text}, no skull"


def choose_auto_window(
    hu: np.ndarray, body_part: str | None, body_part_from: str = "BodyPartExamined"
) -> AutoWindow:
    """The window ``auto`` picks for a slice: from ``body_part`` if it names one, else the histogram.

    ``body_part_from`` names where ``body_part`` came from (a DICOM keyword, never its text) for the
    reason: ``BodyPartExamined=CHEST`` or ``StudyDescription mentions HEAD``.
    """
    word = find_body_part(body_part)
    if word is not None:
        name = BODY_PART_PRESETS[word]
        if body_part_from == "BodyPartExamined":
            reason = f"BodyPartExamined={body_part}"
        else:
            reason = f"{body_part_from} mentions {word}"
    else:
        name, reason = _from_histogram(np.asarray(hu, dtype=np.float32))
    width, level = PRESETS[name]
    return AutoWindow(name, float(width), float(level), reason)
