import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from ctscribe.ct.windows import (
    PRESETS,
    WindowSpec,
    apply_window,
    choose_auto_window,
    find_body_part,
    parse_window,
)


def _real_hu(name: str) -> np.ndarray:
    dataset = pydicom.dcmread(get_testdata_file(name, download=False))
    return apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1


def test_presets_are_the_standard_reading_windows():
    assert PRESETS == {
        "brain": (80, 40),
        "subdural": (200, 75),
        "stroke": (40, 40),
        "temporal-bone": (2800, 600),
        "head-neck": (350, 40),
        "lung": (1500, -600),
        "mediastinum": (350, 50),
        "soft-tissue": (400, 50),
        "liver": (150, 30),
        "spine": (250, 50),
        "bone": (1800, 400),
    }


@pytest.mark.parametrize(
    ("spec", "expected", "label"),
    [
        ("auto", WindowSpec("auto"), "auto"),
        ("lung", WindowSpec("lung", 1500, -600), "lung 1500/-600"),
        ("Soft_Tissue", WindowSpec("soft-tissue", 400, 50), "soft-tissue 400/50"),
        ("temporal bone", WindowSpec("temporal-bone", 2800, 600), "temporal-bone 2800/600"),
        ("400/50", WindowSpec("custom", 400, 50), "400/50"),
        (" 1500 / -600 ", WindowSpec("custom", 1500, -600), "1500/-600"),
        ("80.5/+40", WindowSpec("custom", 80.5, 40), "80.5/40"),
    ],
)
def test_parse_window(spec, expected, label):
    parsed = parse_window(spec)
    assert parsed == expected
    assert parsed.label == label


@pytest.mark.parametrize("spec", ["", "lungs", "400", "400/", "/50", "abc/50", "400/50/3", "nan/40"])
def test_parse_window_rejects_unknown_specs_listing_the_choices(spec):
    with pytest.raises(ValueError, match="expected 'auto', a preset") as error:
        parse_window(spec)
    assert "soft-tissue" in str(error.value) and "1500/-600" in str(error.value)


@pytest.mark.parametrize("spec", ["0/40", "0.5/40", "-400/50"])
def test_parse_window_rejects_widths_below_one(spec):
    with pytest.raises(ValueError, match="at least 1 HU"):
        parse_window(spec)


def test_apply_window_uses_dicom_linear_function_by_hand():
    # soft-tissue, c = 50, w = 400: black at or below c - 0.5 - (w-1)/2 = -150, white above
    # c - 0.5 + (w-1)/2 = 249, else ((hu - 49.5) / 399 + 0.5) * 255 rounded to nearest.
    hu = np.array([-1000, -150, -149, 49.5, 50, 65, 174, 249, 250, np.nan])
    expected = [
        0,  # below the window
        0,  # the lower edge itself is black
        1,  # ((-149 - 49.5) / 399 + 0.5) * 255 = 0.639
        128,  # 0.5 * 255 = 127.5, rounded half to even
        128,  # (0.5 / 399 + 0.5) * 255 = 127.82
        137,  # (15.5 / 399 + 0.5) * 255 = 137.30
        207,  # (124.5 / 399 + 0.5) * 255 = 207.07
        255,  # (199.5 / 399 + 0.5) * 255 = 255
        255,  # above the window
        0,  # NaN: no data
    ]
    out = apply_window(hu, 400, 50)
    assert out.dtype == np.uint8
    assert out.tolist() == expected


def test_apply_window_lung_and_threshold():
    # lung, c = -600, w = 1500: black at or below -1350, white above 149.
    # -849 -> ((-849 + 600.5) / 1499 + 0.5) * 255 = 85.27; 65 -> (665.5 / 1499 + 0.5) * 255 = 240.71
    assert apply_window(np.array([-1350, -849, 65, 149, 150]), 1500, -600).tolist() == [0, 85, 241, 255, 255]
    # w = 1 is a threshold at c - 0.5
    assert apply_window(np.array([39, 39.5, 40]), 1, 40).tolist() == [0, 0, 255]
    with pytest.raises(ValueError):
        apply_window(np.zeros(3), 0, 40)


def test_apply_window_keeps_shape():
    assert apply_window(np.zeros((3, 5), dtype=np.float32), 80, 40).shape == (3, 5)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("HEAD", "HEAD"),
        ("CT Head w/o contrast", "HEAD"),
        ("ct chest with contrast", "CHEST"),
        ("C-SPINE trauma", "SPINE"),
        ("HEADNECK", "HEADNECK"),
        ("CHEST ABDOMEN PELVIS", None),  # lung and soft tissue disagree: the histogram decides
        ("WHOLEBODY", None),
        ("5/5mm Plain", None),
        ("", None),
        (None, None),
    ],
)
def test_find_body_part(text, word):
    assert find_body_part(text) == word


@pytest.mark.parametrize(
    ("body_part", "name", "width", "level"),
    [
        ("HEAD", "brain", 80, 40),
        ("BRAIN", "brain", 80, 40),
        ("NECK", "head-neck", 350, 40),
        ("CHEST", "lung", 1500, -600),
        ("THORAX", "lung", 1500, -600),
        ("ABDOMEN", "soft-tissue", 400, 50),
        ("PELVIS", "soft-tissue", 400, 50),
        ("LIVER", "soft-tissue", 400, 50),
        ("LSPINE", "bone", 1800, 400),
        ("KNEE", "bone", 1800, 400),
    ],
)
def test_auto_window_from_body_part_examined(body_part, name, width, level):
    auto = choose_auto_window(np.zeros((8, 8)), body_part)
    assert (auto.name, auto.width, auto.level) == (name, width, level)
    assert auto.reason == f"BodyPartExamined={body_part}"


def test_auto_window_from_a_description_word_names_the_tag_not_the_text():
    auto = choose_auto_window(np.zeros((8, 8)), "HEAD", "StudyDescription")
    assert auto.name == "brain"
    assert auto.reason == "StudyDescription mentions HEAD"


def test_auto_window_histogram_finds_lungs_in_a_chest_phantom():
    hu = np.full((256, 256), -1000.0, dtype=np.float32)
    hu[_ellipse(hu.shape, (128, 128), (90, 120))] = 40
    hu[_ellipse(hu.shape, (120, 80), (55, 35))] = -850
    hu[_ellipse(hu.shape, (120, 176), (55, 35))] = -850
    auto = choose_auto_window(hu, None)
    assert auto.name == "lung"
    assert auto.reason.startswith("HU histogram: ")
    assert "of body pixels between -950 and -500 HU" in auto.reason


def test_auto_window_histogram_finds_a_brain_inside_a_skull():
    hu = np.full((256, 256), -1000.0, dtype=np.float32)
    hu[_ellipse(hu.shape, (128, 128), (100, 85))] = 1000  # skull
    hu[_ellipse(hu.shape, (128, 128), (92, 77))] = 35  # brain
    hu[_ellipse(hu.shape, (110, 128), (10, 6))] = 5  # a ventricle
    auto = choose_auto_window(hu, None)
    assert auto.name == "brain"
    assert "bone encloses" in auto.reason


def test_auto_window_histogram_defaults_to_soft_tissue():
    hu = np.full((256, 256), -1000.0, dtype=np.float32)
    hu[_ellipse(hu.shape, (128, 128), (90, 120))] = -100  # subcutaneous fat
    hu[_ellipse(hu.shape, (128, 128), (80, 110))] = 50  # organs
    hu[_ellipse(hu.shape, (170, 128), (12, 12))] = 700  # a vertebra, not a skull
    assert choose_auto_window(hu, None).name == "soft-tissue"
    empty = choose_auto_window(np.full((64, 64), -1000.0), None)
    assert empty == ("soft-tissue", 400, 50, "HU histogram: no body found")


def test_auto_window_ignores_unknown_body_parts():
    hu = np.full((64, 64), -1000.0)
    assert choose_auto_window(hu, "WHOLEBODY").reason == "HU histogram: no body found"


def test_auto_window_on_real_slices():
    # 693_J2KI is a head slice without BodyPartExamined: the skull decides.
    assert choose_auto_window(_real_hu("693_J2KI.dcm"), None).name == "brain"
    # CT_small is a slice near the spine with no lung in it: soft tissue.
    assert choose_auto_window(_real_hu("CT_small.dcm"), None).name == "soft-tissue"
