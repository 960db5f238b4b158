import random
import shutil
import traceback
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from ctscribe.ct import dicom
from ctscribe.ct.dicom import (
    CTReadError,
    CTSlice,
    group_series,
    read_dicom,
    read_dicom_headers,
    read_series,
)
from ctscribe.ct.windows import apply_window
from ctscribe.fixtures.dicom_samples import write_sentinel_dicom


def _testfile(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} missing: pydicom / pydicom-data not installed"
    return path


def _rescale(dataset: pydicom.Dataset) -> tuple[float, float]:
    """(slope, intercept) read from the header: top level, or Enhanced CT's functional groups."""
    if "RescaleSlope" in dataset:
        return float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
    item = dataset.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    return float(item.RescaleSlope), float(item.RescaleIntercept)


def _check_hu(ct: CTSlice, dataset: pydicom.Dataset, raw: np.ndarray, pixels: list[tuple[int, int]]) -> None:
    slope, intercept = _rescale(dataset)
    assert ct.hu.dtype == np.float32 and ct.hu.shape == raw.shape
    for row, col in pixels:
        assert ct.hu[row, col] == float(raw[row, col]) * slope + intercept


def test_ct_small_hu_window_and_safe_meta():
    path = _testfile("CT_small.dcm")
    [ct] = read_dicom(path)
    dataset = pydicom.dcmread(path)
    assert _rescale(dataset) == (1.0, -1024.0)
    raw = dataset.pixel_array
    assert [int(raw[p]) for p in [(0, 0), (64, 64), (100, 30), (20, 90)]] == [175, 1928, 1089, 1198]
    _check_hu(ct, dataset, raw, [(0, 0), (64, 64), (100, 30), (20, 90)])
    assert [ct.hu[p] for p in [(0, 0), (64, 64), (100, 30), (20, 90)]] == [-849, 904, 65, 174]
    # soft tissue 400/50: 65 HU -> (15.5 / 399 + 0.5) * 255 = 137.30,
    # 174 HU -> (124.5 / 399 + 0.5) * 255 = 207.07
    window = apply_window(ct.hu, 400, 50)
    assert [window[p] for p in [(0, 0), (64, 64), (100, 30), (20, 90)]] == [0, 255, 137, 207]
    assert ct.position == pytest.approx(-75.699997)  # axial: ImagePositionPatient z
    assert ct.instance_number == 1 and ct.frame == 0 and ct.source == path
    assert ct.body_part is None  # BodyPartExamined absent, StudyDescription 'e+1' names no body part
    assert ct.safe_meta == {
        "format": "DICOM",
        "modality": "CT",
        "rows": 128,
        "columns": 128,
        "frames": 1,
        "pixel_spacing": [0.661468, 0.661468],
        "slice_thickness": 5.0,
        "kvp": 120.0,
        "transfer_syntax": "Explicit VR Little Endian",
        "body_part_examined": None,
    }
    assert len(ct.series_key) == 16 and str(dataset.SeriesInstanceUID) not in repr(ct)


def test_jpeg2000_ct():
    path = _testfile("693_J2KI.dcm")
    [ct] = read_dicom(path)
    dataset = pydicom.dcmread(path)
    raw = dataset.pixel_array
    assert [int(raw[p]) for p in [(256, 256), (100, 256)]] == [1056, 623]
    _check_hu(ct, dataset, raw, [(256, 256), (100, 256), (0, 0)])
    # brain 80/40: 32 HU -> ((32 - 39.5) / 79 + 0.5) * 255 = 103.29; -401 HU is below the window
    assert ct.hu[256, 256] == 32 and ct.hu[100, 256] == -401
    assert apply_window(ct.hu, 80, 40)[[256, 100], [256, 256]].tolist() == [103, 0]
    assert ct.safe_meta["transfer_syntax"] == "JPEG 2000 Image Compression"


def test_jpeg_lossless_ct():
    # pydicom-data's JPEG-LL.dcm is nuclear medicine (see below); bad_sequence.dcm is the JPEG Lossless CT.
    path = _testfile("bad_sequence.dcm")
    [ct] = read_dicom(path)
    dataset = pydicom.dcmread(path)
    raw = dataset.pixel_array
    assert [int(raw[p]) for p in [(256, 256), (400, 100)]] == [1226, 1069]
    _check_hu(ct, dataset, raw, [(256, 256), (400, 100)])
    # head-neck 350/40 (white above 39.5 + 349 / 2 = 214): 202 HU -> ((202 - 39.5) / 349 + 0.5) * 255
    # = 246.23; 45 HU -> (5.5 / 349 + 0.5) * 255 = 131.52
    assert apply_window(ct.hu, 350, 40)[[256, 400], [256, 100]].tolist() == [246, 132]
    assert ct.safe_meta["transfer_syntax"].startswith("JPEG Lossless, Non-Hierarchical, First-Order")
    assert (ct.body_part, ct.body_part_from) == ("NECK", "BodyPartExamined")


def test_enhanced_ct_multiframe_uses_functional_groups():
    path = _testfile("eCT_Supplemental.dcm")
    slices = read_dicom(path)
    dataset = pydicom.dcmread(path)
    assert "RescaleSlope" not in dataset  # only in the functional groups
    assert _rescale(dataset) == (1.0, -1024.0)
    raw = dataset.pixel_array
    assert raw.shape == (2, 512, 512)
    assert [ct.frame for ct in slices] == [0, 1]
    for ct, frame in zip(slices, raw, strict=True):
        _check_hu(ct, dataset, frame, [(256, 256), (200, 300), (0, 0)])
    assert slices[1].hu[256, 256] == 1022 - 1024
    # Per-frame ImagePositionPatient z is -159 then -149; rows run to the patient's right
    # (orientation -1,0,0 / 0,1,0), yet positions still increase feet to head.
    assert [ct.position for ct in slices] == [-159.0, -149.0]
    assert slices[0].safe_meta["pixel_spacing"] == [0.388672, 0.388672]
    assert slices[0].safe_meta["slice_thickness"] == 10.0
    assert slices[0].safe_meta["frames"] == 2
    [second] = read_dicom(path, frames=[1])
    assert second.frame == 1 and np.array_equal(second.hu, slices[1].hu)
    with pytest.raises(CTReadError, match="frame out of range"):
        read_dicom(path, frames=[2])


@pytest.mark.parametrize(("name", "modality"), [("JPEG-LL.dcm", "NM"), ("emri_small.dcm", "MR")])
def test_non_ct_is_refused(name, modality):
    with pytest.raises(CTReadError, match=f"^modality {modality}, not CT$"):
        read_dicom(_testfile(name))
    with pytest.raises(CTReadError, match="not CT"):
        read_dicom_headers(_testfile(name))


def test_unknown_modality_is_not_quoted(tmp_path):
    dataset = pydicom.dcmread(_testfile("CT_small.dcm"))
    dataset.Modality = "XYZZY"
    dataset.save_as(tmp_path / "odd.dcm")
    with pytest.raises(CTReadError, match=r"^no or unknown modality, not CT$"):
        read_dicom(tmp_path / "odd.dcm")


def test_missing_decoder_names_the_transfer_syntax_and_the_fix(monkeypatch):
    class Missing:
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Missing())
    with pytest.raises(CTReadError) as error:
        read_dicom(_testfile("693_J2KI.dcm"))
    message = str(error.value)
    assert "JPEG 2000 Image Compression" in message and "pylibjpeg-openjpeg" in message
    [ct] = read_dicom(_testfile("CT_small.dcm"))  # uncompressed needs no decoder
    assert ct.hu.shape == (128, 128)


def test_transfer_syntax_without_any_decoder(tmp_path):
    dataset = pydicom.dcmread(_testfile("CT_small.dcm"))
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([dataset.PixelData])
    dataset.save_as(tmp_path / "video.dcm")
    with pytest.raises(CTReadError, match="MPEG2 Main Profile / Main Level is not supported"):
        read_dicom(tmp_path / "video.dcm")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a DICOM file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 300, "not a DICOM file"),
        (b"\x00" * 128 + b"DICM" + b"\xff" * 40, "unreadable DICOM header|no image|not CT"),
    ],
)
def test_garbage_is_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(CTReadError, match=reason):
        read_dicom(path)


def test_implausible_frame_count_is_refused(tmp_path):
    dataset = pydicom.dcmread(_testfile("CT_small.dcm"))
    dataset.NumberOfFrames = 10**9
    dataset.save_as(tmp_path / "frames.dcm")
    with pytest.raises(CTReadError, match="implausible number of frames"):
        read_dicom_headers(tmp_path / "frames.dcm")


def test_truncated_file_is_an_error(tmp_path):
    data = Path(_testfile("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    read_dicom_headers(tmp_path / "cut.dcm")  # the header is intact ...
    with pytest.raises(CTReadError, match="cannot decode the pixel data"):
        read_dicom(tmp_path / "cut.dcm")  # ... the pixels are not
    (tmp_path / "head.dcm").write_bytes(data[:600])
    with pytest.raises(CTReadError, match="no image"):
        read_dicom(tmp_path / "head.dcm")
    with pytest.raises(CTReadError, match="no such file"):
        read_dicom(tmp_path / "missing.dcm")


def _write_series(folder: Path, count: int, series_uid: str, z0: float = 0.0) -> list[Path]:
    """CT_small copies at z = z0, z0 + 2.5, ...; raw pixel (0, 0) is 3000 + slice number.

    Instance numbers run backwards, so only the positions give the right order.
    """
    dataset = pydicom.dcmread(_testfile("CT_small.dcm"))
    dataset.SeriesInstanceUID = series_uid
    paths = []
    for number in range(count):
        pixels = dataset.pixel_array.copy()
        pixels[0, 0] = 3000 + number
        dataset.PixelData = pixels.tobytes()
        dataset.ImagePositionPatient = [-158.1, -179.0, z0 + 2.5 * number]
        dataset.InstanceNumber = count - number
        dataset.SOPInstanceUID = f"{series_uid}.{number}"
        paths.append(folder / f"{series_uid[-4:]}-{number:02d}.dcm")
        dataset.save_as(paths[-1])
    return paths


def test_series_in_shuffled_order_comes_out_by_position(tmp_path):
    paths = _write_series(tmp_path, 6, "1.2.826.0.1.3680043.8.498.7001")
    random.Random(3).shuffle(paths)
    [series] = read_series(paths)
    assert [ct.hu[0, 0] for ct in series] == [3000 + n - 1024 for n in range(6)]
    assert [ct.position for ct in series] == [2.5 * n for n in range(6)]


def test_several_series_are_grouped_and_each_sorted(tmp_path):
    first = _write_series(tmp_path, 3, "1.2.826.0.1.3680043.8.498.7001")
    second = _write_series(tmp_path, 4, "1.2.826.0.1.3680043.8.498.7002", z0=100)
    mixed = [*first, *second]
    random.Random(5).shuffle(mixed)
    groups = read_series(mixed)
    assert sorted(len(group) for group in groups) == [3, 4]
    for group in groups:
        positions = [ct.position for ct in group]
        assert positions == sorted(positions)
        assert len({ct.series_key for ct in group}) == 1
    assert groups[0][0].series_key != groups[1][0].series_key


def test_series_without_positions_falls_back_to_instance_number(tmp_path):
    paths = _write_series(tmp_path, 4, "1.2.826.0.1.3680043.8.498.7003")
    for path in paths:
        dataset = pydicom.dcmread(path)
        del dataset.ImagePositionPatient
        dataset.save_as(path)
    headers = [header for path in reversed(paths) for header in read_dicom_headers(path)]
    [series] = group_series(headers)
    assert [header.position for header in series] == [None] * 4
    assert [header.instance_number for header in series] == [1, 2, 3, 4]


def test_read_series_names_the_bad_file(tmp_path):
    [good] = _write_series(tmp_path, 1, "1.2.826.0.1.3680043.8.498.7004")
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"junk")
    with pytest.raises(CTReadError, match=r"^broken\.dcm: not a DICOM file"):
        read_series([good, bad])


def _assert_no_sentinel(sentinels: list[str], *texts: str) -> None:
    for text in texts:
        for sentinel in sentinels:
            assert sentinel not in text, f"{sentinel!r} leaked into {text[:200]!r}"


def test_no_identifier_leaves_the_reader(tmp_path):
    path = tmp_path / "patient.dcm"
    sentinels = write_sentinel_dicom(path)
    assert "SENTINEL-PN-1234" in sentinels and len(sentinels) >= 7
    assert sum(sentinel in path.read_bytes().decode("latin-1") for sentinel in sentinels) == len(sentinels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slices = read_dicom(path)
        headers = read_dicom_headers(path)
    [ct] = slices
    assert ct.hu.shape == (128, 128)
    _assert_no_sentinel(
        sentinels,
        repr(slices),
        repr(headers),
        repr(ct.safe_meta),
        ct.series_key,
        str(ct.body_part),
        *(str(warning.message) for warning in caught),
    )


def test_a_description_steers_the_body_part_without_leaking(tmp_path):
    path = tmp_path / "patient.dcm"
    sentinels = write_sentinel_dicom(path, sentinel="SENTINEL-ST-0042")
    dataset = pydicom.dcmread(path)
    dataset.StudyDescription = "CT HEAD SENTINEL-ST-0042"
    dataset.save_as(path)
    [ct] = read_dicom(path)
    assert (ct.body_part, ct.body_part_from) == ("HEAD", "StudyDescription")
    _assert_no_sentinel(sentinels, repr(ct))


@pytest.mark.parametrize("damage", ["corrupt_pixels", "truncated_file", "not_ct"])
def test_no_identifier_in_errors(tmp_path, damage):
    path = tmp_path / "patient.dcm"
    sentinels = write_sentinel_dicom(path, corrupt_pixels=damage == "corrupt_pixels")
    if damage == "truncated_file":
        path.write_bytes(path.read_bytes()[:-3000])
    if damage == "not_ct":
        dataset = pydicom.dcmread(path)
        dataset.Modality = "MR"
        dataset.save_as(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CTReadError) as error:
            read_dicom(path)
    assert error.value.__cause__ is None
    assert error.value.__context__ is None or error.value.__suppress_context__
    _assert_no_sentinel(
        sentinels,
        str(error.value),
        repr(error.value),
        "".join(traceback.format_exception(error.value)),
        *(str(warning.message) for warning in caught),
    )


def test_series_key_is_stable_in_a_process_but_not_the_uid(tmp_path):
    path = tmp_path / "a.dcm"
    shutil.copy(_testfile("CT_small.dcm"), path)
    assert read_dicom_headers(path)[0].series_key == read_dicom_headers(path)[0].series_key
    uid = str(pydicom.dcmread(path).SeriesInstanceUID)
    assert uid not in read_dicom_headers(path)[0].series_key


def test_invalid_values_are_neither_warned_nor_logged(tmp_path, caplog):
    """pydicom quotes invalid values in its warnings and logs; reading here must silence both."""
    path = tmp_path / "patient.dcm"
    sentinels = write_sentinel_dicom(path)
    dataset = pydicom.dcmread(path)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        dataset.SOPInstanceUID = "1.2.SENTINEL-PN-1234"  # not a valid UID: pydicom complains, quoting it
    dataset.save_as(path)
    with warnings.catch_warnings(record=True) as unguarded:
        warnings.simplefilter("always")
        _ = pydicom.dcmread(path).SOPInstanceUID
    assert any("SENTINEL-PN-1234" in str(warning.message) for warning in unguarded)  # the hazard is real
    assert any("SENTINEL-PN-1234" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [ct] = read_dicom(path)
    _assert_no_sentinel(
        sentinels,
        repr(ct),
        *(str(warning.message) for warning in caught),
        *(record.getMessage() for record in caplog.records),
    )


def test_damaged_headers_only_ever_raise_ctreaderror_without_identifiers(tmp_path):
    """Random byte damage to a sentinel file's header: every outcome is slices or a clean CTReadError."""
    source = tmp_path / "patient.dcm"
    sentinels = write_sentinel_dicom(source)
    data = source.read_bytes()
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")
    rng = random.Random(0)
    outcomes = set()
    for number in range(60):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(132, pixel_data)] = rng.randrange(256)
        path = tmp_path / f"damaged-{number}.dcm"
        path.write_bytes(damaged)
        try:
            text = repr(read_dicom(path))
            outcomes.add("read")
        except CTReadError as error:
            text = str(error)
            outcomes.add(text)
        _assert_no_sentinel(sentinels, text)
    assert "read" in outcomes and len(outcomes) >= 3
