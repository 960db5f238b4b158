from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctscribe.ct.dicom import CTReadError
from ctscribe.ct.nifti import read_nifti

# Voxel axes stored as (Posterior, Superior, Left): axis 0 runs front to back (2 mm), axis 1 feet to
# head (3 mm), axis 2 patient right to left (1.5 mm). Nothing like RAS, so every flip and the
# transpose must happen for the slices to come out right.
AFFINE = np.array(
    [
        [0.0, 0.0, -1.5, 10.0],
        [-2.0, 0.0, 0.0, 20.0],
        [0.0, 3.0, 0.0, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SHAPE = (5, 4, 7)  # 5 front-to-back, 4 slices, 7 right-to-left
SLOPE, INTERCEPT = 2.0, -1024.0


def write_volume(path: Path) -> Path:
    """An int16 volume scaled to HU by the header; slice k holds 10 * k, plus three markers on slice 2."""
    raw = np.zeros(SHAPE, dtype=np.int16)
    for level in range(SHAPE[1]):
        raw[:, level, :] = (10 * level - INTERCEPT) / SLOPE
    raw[0, 2, 0] = 1000  # most anterior, most patient-right
    raw[0, 2, 6] = 1001  # most anterior, most patient-left
    raw[4, 2, 6] = 1002  # most posterior, most patient-left
    image = nib.Nifti1Image(raw, AFFINE)
    image.header.set_slope_inter(SLOPE, INTERCEPT)
    nib.save(image, path)
    return path


def test_orientation_is_radiological_and_slices_go_feet_to_head(tmp_path):
    path = write_volume(tmp_path / "volume.nii.gz")
    assert nib.aff2axcodes(AFFINE) == ("P", "S", "L")
    slices = read_nifti(path)
    assert len(slices) == 4
    assert [ct.position for ct in slices] == [-30.0, -27.0, -24.0, -21.0]  # world z, increasing superior
    assert [ct.frame for ct in slices] == [0, 1, 2, 3]
    for ct in slices:
        assert ct.hu.dtype == np.float32
        assert ct.hu.shape == (5, 7)  # rows front to back, columns across the patient
    assert [float(np.median(ct.hu)) for ct in slices] == [0.0, 10.0, 20.0, 30.0]
    marked = slices[2].hu
    # Anterior at the top, the patient's right on the image's left: HU = raw * 2 - 1024.
    assert marked[0, 0] == 1000 * SLOPE + INTERCEPT  # top left: anterior, right
    assert marked[0, 6] == 1001 * SLOPE + INTERCEPT  # top right: anterior, left
    assert marked[4, 6] == 1002 * SLOPE + INTERCEPT  # bottom right: posterior, left
    assert slices[0].safe_meta == {
        "format": "NIfTI",
        "rows": 5,
        "columns": 7,
        "frames": 4,
        "pixel_spacing": [2.0, 1.5],
        "slice_thickness": 3.0,
    }
    assert len({ct.series_key for ct in slices}) == 1


def test_plain_nii_and_a_trailing_singleton_axis(tmp_path):
    data = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii")
    slices = read_nifti(tmp_path / "v.nii")
    assert len(slices) == 2
    # RAS already: image[r, c] = data[2 - c, 3 - r, k]
    assert slices[1].hu[0, 0] == data[2, 3, 1, 0] and slices[1].hu[3, 2] == data[0, 0, 1, 0]


def test_time_series_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), dtype=np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(CTReadError, match="4-D image, not a 3-D CT volume"):
        read_nifti(tmp_path / "4d.nii.gz")


def test_corrupt_and_missing_files(tmp_path):
    for name in ("volume.nii.gz", "volume.nii"):
        data = write_volume(tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) * 3 // 4])
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file at all" * 20)
    for name in ("cut-volume.nii.gz", "cut-volume.nii", "junk.nii"):
        with pytest.raises(CTReadError, match=r"not a readable NIfTI file|cannot read the voxel data"):
            read_nifti(tmp_path / name)
    with pytest.raises(CTReadError, match="no such file"):
        read_nifti(tmp_path / "missing.nii.gz")
