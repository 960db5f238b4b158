import json
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from ctscribe.ct.inputs import InputItem, SliceSelection, iter_inputs, parse_slices
from ctscribe.ct.windows import apply_window
from ctscribe.fixtures.dicom_samples import write_sentinel_dicom


def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} missing: pydicom / pydicom-data not installed"
    return Path(path)


def _series(folder: Path, count: int, series_uid: str) -> list[Path]:
    """CT_small copies 2.5 mm apart; raw pixel (0, 0) is 3000 + the slice's place from feet to head."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset = pydicom.dcmread(_testfile("CT_small.dcm"))
    dataset.SeriesInstanceUID = series_uid
    order = list(range(count))
    random.Random(count).shuffle(order)  # file names in no particular order
    paths = []
    for number in range(count):
        pixels = dataset.pixel_array.copy()
        pixels[0, 0] = 3000 + number
        dataset.PixelData = pixels.tobytes()
        dataset.ImagePositionPatient = [-158.1, -179.0, 2.5 * number]
        dataset.InstanceNumber = number + 1
        dataset.SOPInstanceUID = f"{series_uid}.{number}"
        paths.append(folder / f"IM{order[number]:04d}")  # no extension: found by the DICM preamble
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def _marker(item: InputItem) -> int:
    """The grey of a _series slice's marker pixel: increases with the marker, so with the slice."""
    assert item.image is not None
    return int(np.asarray(item.image)[0, 0, 0])


def _png(path: Path, colour=(10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def _volume(path: Path, slices: int = 5) -> Path:
    data = np.zeros((6, 8, slices), dtype=np.float32)
    for k in range(slices):
        data[:, :, k] = 100 * k
    affine = np.array([[-1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, -1.5, 0, 0], [0, 0, 0, 1]])  # L, I, A
    nib.save(nib.Nifti1Image(np.transpose(data, (0, 2, 1))[:, ::-1, :].copy(), affine), path)
    return path


def test_parse_slices():
    assert parse_slices("middle") == SliceSelection("middle")
    assert parse_slices(" ALL ") == SliceSelection("all")
    assert parse_slices("every:3") == SliceSelection("every", 3)
    for bad in ("", "some", "every:", "every:0", "every:-2", "every:x", "every:1.5"):
        with pytest.raises(ValueError, match="expected 'middle', 'all' or 'every:K'"):
            parse_slices(bad)


def test_slice_selection_picks():
    assert SliceSelection("middle").pick(5) == [2]
    assert SliceSelection("middle").pick(4) == [2]
    assert SliceSelection("middle").pick(1) == [0]
    assert SliceSelection("all").pick(3) == [0, 1, 2]
    assert SliceSelection("every", 2).pick(5) == [0, 2, 4]
    assert SliceSelection("every", 2).pick(0) == []


def test_bad_specs_raise_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match="unknown window"):
        iter_inputs([tmp_path / "missing"], window="lungs")
    with pytest.raises(ValueError, match="unknown slice selection"):
        iter_inputs([tmp_path / "missing"], slices="half")


def test_plain_images_pass_through_unwindowed(tmp_path):
    path = _png(tmp_path / "scan.png")
    grey16 = tmp_path / "grey16.tif"
    Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50).save(grey16)
    first, second = iter_inputs([path, grey16], window="lung")
    assert first.source == str(path) and first.window is None and first.error is None
    assert first.slice_index is None and first.key == str(path)
    assert first.image.mode == "RGB" and first.image.getpixel((3, 3)) == (10, 200, 30)
    assert second.image.mode == "RGB" and second.image.size == (40, 30)


def test_bad_inputs_become_error_items_and_iteration_continues(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(_testfile("CT_small.dcm").read_bytes()[:-5000])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    good = _png(tmp_path / "good.png")
    items = list(
        iter_inputs(
            [garbage, tmp_path / "missing.dcm", truncated, _testfile("JPEG-LL.dcm"), notes, tmp_path, good]
        )
    )
    errors = {Path(item.source).name: item.error for item in items if item.error}
    assert errors["garbage.png"].startswith("cannot decode image")
    assert errors["missing.dcm"] == "no such file or folder"
    assert errors["cut.dcm"] == "cannot decode the pixel data (corrupt or truncated)"
    assert errors["JPEG-LL.dcm"] == "modality NM, not CT"
    assert errors["notes.txt"].startswith("unsupported file")
    assert all(item.image is None for item in items if item.error)
    # The folder itself holds good.png, garbage.png and cut.dcm; good.png also comes last on its own.
    assert [item.source for item in items if item.error is None] == [str(good), str(good)]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    [item] = iter_inputs([tmp_path])
    assert item.error == "no images, DICOM or NIfTI files in this folder"


def test_single_dicom_file_with_fixed_window():
    path = _testfile("CT_small.dcm")
    [item] = iter_inputs([path], window="lung")
    assert item.error is None and item.source == str(path) and item.slice_index == 0
    assert item.window == "lung 1500/-600"
    assert item.key == f"{path}#0"
    pixels = np.asarray(item.image)
    assert item.image.mode == "RGB" and pixels.shape == (128, 128, 3)
    # HU = raw * 1 - 1024 (raw 175 at (0, 0), 1089 at (100, 30)); lung window by hand:
    # -849 -> ((-849 + 600.5) / 1499 + 0.5) * 255 = 85.27, 65 -> (665.5 / 1499 + 0.5) * 255 = 240.71
    assert pixels[0, 0].tolist() == [85, 85, 85]
    assert pixels[100, 30].tolist() == [241, 241, 241]
    [custom] = iter_inputs([path], window="400/50")
    assert custom.window == "400/50"
    assert np.asarray(custom.image)[100, 30, 0] == 137  # (15.5 / 399 + 0.5) * 255 = 137.30


def test_auto_window_reasons():
    [neck] = iter_inputs([_testfile("bad_sequence.dcm")])
    assert neck.window == "head-neck 350/40 (auto: BodyPartExamined=NECK)"
    [head] = iter_inputs([_testfile("693_J2KI.dcm")])
    assert head.window.startswith("brain 80/40 (auto: HU histogram: bone encloses ")
    hu = pydicom.dcmread(_testfile("693_J2KI.dcm")).pixel_array.astype(np.float64) - 1024
    assert np.array_equal(np.asarray(head.image)[..., 0], apply_window(hu, 80, 40))


def test_enhanced_ct_file_is_a_series_of_its_frames():
    path = _testfile("eCT_Supplemental.dcm")
    items = list(iter_inputs([path], window="brain", slices="all"))
    assert [(item.source, item.slice_index) for item in items] == [(str(path), 0), (str(path), 1)]
    assert [item.key for item in items] == [f"{path}#0", f"{path}#1"]
    [middle] = iter_inputs([path], window="brain")
    assert middle.slice_index == 1


def test_folder_series_in_shuffled_order(tmp_path):
    _series(tmp_path / "study" / "a", 7, "1.2.826.0.1.3680043.8.498.9001")
    # Markers are 1976 + n HU; a narrow window around them tells them apart: ~13 greys per HU.
    items = list(iter_inputs([tmp_path / "study"], window="20/1980", slices="all"))
    assert [item.slice_index for item in items] == list(range(7))
    assert [_marker(item) for item in items] == sorted(_marker(item) for item in items)
    assert len({_marker(item) for item in items}) == 7
    every = list(iter_inputs([tmp_path / "study"], window="lung", slices="every:3"))
    assert [item.slice_index for item in every] == [0, 3, 6]
    [middle] = iter_inputs([tmp_path / "study"], window="lung")
    assert middle.slice_index == 3
    assert middle.source == items[3].source and middle.key == items[3].key


def test_folder_with_two_series_images_and_a_bad_slice(tmp_path):
    root = tmp_path / "export"
    _series(root / "s1", 3, "1.2.826.0.1.3680043.8.498.9101")
    _series(root / "s2", 5, "1.2.826.0.1.3680043.8.498.9102")
    _png(root / "key-image.png")
    shutil.copy(_testfile("CT_small.dcm"), root / "s2" / "zz-extra-series.dcm")
    (root / "s1" / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00")
    (root / ".DS_Store").write_bytes(b"junk")
    items = list(iter_inputs([str(root)], window="lung", slices="middle"))
    sources = [Path(item.source).relative_to(root).as_posix() for item in items]
    assert sources[0] == "key-image.png"
    errors = [item for item in items if item.error]
    assert [Path(item.source).name for item in errors] == ["broken.dcm"]
    series_items = [item for item in items if item.error is None and item.slice_index is not None]
    assert [item.slice_index for item in series_items] == [1, 2, 0]  # middles of 3, 5 and 1 slices
    assert all(item.source.startswith(str(root)) for item in items)


def test_nifti_slice_selection(tmp_path):
    path = _volume(tmp_path / "ct.nii.gz", slices=5)
    assert len(list(iter_inputs([path], window="soft-tissue", slices="all"))) == 5
    every = list(iter_inputs([path], window="soft-tissue", slices="every:2"))
    assert [item.slice_index for item in every] == [0, 2, 4]
    # slice k holds 100 * k HU, feet to head; soft tissue 400/50 by hand:
    # 0 -> ((0 - 49.5) / 399 + 0.5) * 255 = 95.86; 200 -> (150.5 / 399 + 0.5) * 255 = 223.68; 400 -> 255
    assert [int(np.asarray(item.image)[0, 0, 0]) for item in every] == [96, 224, 255]
    [middle] = iter_inputs([path])
    assert middle.slice_index == 2 and middle.window.startswith("soft-tissue 400/50 (auto: HU histogram")
    assert middle.key == f"{path}#2"
    assert np.asarray(middle.image).shape == (8, 6, 3)  # rows anterior-posterior, columns right-left


def test_split_json_records(tmp_path):
    data = tmp_path / "data"
    _png(data / "images" / "ab" / "row-1.png")
    records = [
        {
            "id": "row-1",
            "messages": [
                {"role": "user", "content": "<image>Describe this CT image."},
                {"role": "assistant", "content": "CT of the chest: no lesion."},
            ],
            "images": ["images/ab/row-1.png"],
        },
        {
            "id": 7,
            "messages": [{"role": "user", "content": "<image>What is shown?"}],
            "images": ["images/cd/missing.png"],
        },
        {"id": "row-3", "messages": [], "images": []},
    ]
    (data / "test.json").write_text(json.dumps(records))
    first, second, third = iter_inputs([data / "test.json"])
    assert first.source == str(data / "images" / "ab" / "row-1.png") and first.error is None
    assert (first.prompt, first.reference, first.record_id) == (
        "Describe this CT image.",
        "CT of the chest: no lesion.",
        "row-1",
    )
    assert first.window is None and first.image.mode == "RGB"
    assert second.error.startswith("cannot read image") and second.record_id == "7"
    assert second.prompt == "What is shown?" and second.reference is None
    assert third.error == "bad record: expected one image and a prompt"
    (data / "broken.json").write_text("[{")
    [broken] = iter_inputs([data / "broken.json"])
    assert broken.error == "not a readable split JSON file"


def test_keys_are_stable_across_runs(tmp_path):
    _series(tmp_path / "s", 4, "1.2.826.0.1.3680043.8.498.9201")
    _png(tmp_path / "x.png")
    runs = [[item.key for item in iter_inputs([tmp_path], slices="all")] for _ in range(2)]
    assert runs[0] == runs[1] and len(set(runs[0])) == 5


def test_no_identifier_in_items(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    sentinels = write_sentinel_dicom(folder / "a.dcm")
    sentinels += write_sentinel_dicom(folder / "b.dcm", sentinel="SENTINEL-XY-9876", corrupt_pixels=True)
    items = list(iter_inputs([folder, folder / "a.dcm", folder / "b.dcm"], slices="all"))
    assert [item.error is None for item in items] == [True, False, True, False]
    for item in items:
        text = repr(item) + str(item.error) + str(item.window) + item.source + item.key
        for sentinel in sentinels:
            assert sentinel not in text
