"""clean_caption: whitespace, punctuation and bounding-box leftovers, without changing the meaning."""

from __future__ import annotations

import pytest

from ctscribe.prepare.captions import clean_caption

CLEAN = (
    "The image is a non-contrast computed tomography (CT) scan of the brain, showing the cerebral "
    "hemispheres, ventricles, and subarachnoid spaces without any medical devices visible. The region of "
    "interest, located centrally and in the middle of the image, exhibits an area of increased density "
    "compared to the surrounding brain tissue, which is indicative of an intracranial hemorrhage. It "
    "occupies approximately 4.1% of the image area, e.g. the left frontal lobe (see the ventricles)."
)


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", '""', "' '"])
def test_empty_or_whitespace_only_is_empty(text: str) -> None:
    assert clean_caption(text) == ""


def test_whitespace_is_collapsed_and_stripped() -> None:
    messy = "  The image is a CT scan\nof the chest.\n\n  The   lesion is\thypodense.  "
    assert clean_caption(messy) == "The image is a CT scan of the chest. The lesion is hypodense."


def test_caption_without_artefacts_is_unchanged_except_whitespace() -> None:
    assert clean_caption(CLEAN) == CLEAN
    assert clean_caption("  " + CLEAN.replace(". ", ".\n\n").replace(", ", ",  ") + "\n") == CLEAN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The lesion is hypodense , and it is round .", "The lesion is hypodense, and it is round."),
        (
            "The liver ( right lobe ) is enlarged ; no ascites .",
            "The liver (right lobe) is enlarged; no ascites.",
        ),
        ("The image is a CT scan of the chest", "The image is a CT scan of the chest."),
        ("The lesion occupies 4.1%", "The lesion occupies 4.1%."),
        ("The lesion is hypodense,", "The lesion is hypodense."),
        ("Is the lesion hypodense?", "Is the lesion hypodense?"),
    ],
)
def test_punctuation(text: str, expected: str) -> None:
    assert clean_caption(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"The image is a CT scan of the brain."', "The image is a CT scan of the brain."),
        ("'The image is a CT scan of the brain.'", "The image is a CT scan of the brain."),
        ('"The image is a CT scan of the brain.', "The image is a CT scan of the brain."),
        ("'The image is a CT scan of the brain.", "The image is a CT scan of the brain."),
        ("The image shows the patients'", "The image shows the patients'."),
        ('The image shows a "ground-glass" opacity.', 'The image shows a "ground-glass" opacity.'),
        ("“The image is a CT scan of the brain.”", "The image is a CT scan of the brain."),
    ],
)
def test_stray_quotes(text: str, expected: str) -> None:
    assert clean_caption(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "The region of interest, marked by the green bounding box, shows a hypodense lesion.",
            "The region of interest shows a hypodense lesion.",
        ),
        (
            "The region of interest within the bounding box exhibits increased density.",
            "The region of interest exhibits increased density.",
        ),
        (
            "The lesion is hypodense, as indicated by the green bounding box.",
            "The lesion is hypodense.",
        ),
        (
            "The lesion is hypodense as indicated by the bounding box, and it abuts the liver.",
            "The lesion is hypodense, and it abuts the liver.",
        ),
        (
            "The nodule (highlighted by the bounding box) occupies approximately 4.1% of the image area.",
            "The nodule occupies approximately 4.1% of the image area.",
        ),
        (
            "The region of interest enclosed in the green box is located in the right lobe.",
            "The region of interest is located in the right lobe.",
        ),
        (
            "Within the green bounding box, there is a hyperdense area. The area inside the bounding box "
            "is round.",
            "There is a hyperdense area. The area is round.",
        ),
        (
            "The region of interest, which is located within the bounding box, appears hypodense.",
            "The region of interest appears hypodense.",
        ),
        (
            "The region of interest, located in the left lobe, marked by the bounding box, is hypodense.",
            "The region of interest, located in the left lobe, is hypodense.",
        ),
        (
            "The region of interest, located centrally within the bounding box, is hypodense.",
            "The region of interest, located centrally, is hypodense.",
        ),
        (
            "The mass (green box) compresses the ventricle.",
            "The mass compresses the ventricle.",
        ),
        (
            "The image is a CT of the chest. The region of interest is located within the bounding box. It "
            "is a "
            "nodule.",
            "The image is a CT of the chest. It is a nodule.",
        ),
    ],
)
def test_bounding_box_phrases_are_removed(text: str, expected: str) -> None:
    assert clean_caption(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "The lesion [0.23, 0.45, 0.51, 0.68] is hypodense.",
            "The lesion is hypodense.",
        ),
        (
            "The lesion, located at bounding box coordinates (0.23, 0.45, 0.51, 0.68), is hypodense.",
            "The lesion is hypodense.",
        ),
        (
            "The image is a CT of the liver. The bounding box coordinates are (x1, y1, x2, y2). The lesion "
            "is "
            "hypodense.",
            "The image is a CT of the liver. The lesion is hypodense.",
        ),
        (
            "The nodule is solid; located at [12, 40, 88, 120], it abuts the pleura.",
            "The nodule is solid; it abuts the pleura.",
        ),
        ("Bounding box coordinates: [0.1, 0.2, 0.3, 0.4].", ""),
    ],
)
def test_coordinates_are_removed(text: str, expected: str) -> None:
    assert clean_caption(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The box-like calcification is seen in the left kidney.",
        "The region of interest is located in the upper left quadrant of the image.",
        "The lesion measures 1.2 x 3.4 cm and occupies approximately 4.1% of the image area.",
        "The vertebral bodies (L1, L2, L3) show no fracture.",
        "The region of interest is enclosed in the green box and measures 3 cm.",
    ],
)
def test_other_content_is_kept(text: str) -> None:
    assert clean_caption(text) == text
