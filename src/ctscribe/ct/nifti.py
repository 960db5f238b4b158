"""Reading CT volumes from NIfTI (``.nii``, ``.nii.gz``) as axial slices in radiological view.

NIfTI stores a voxel grid and an affine to world coordinates in RAS+ (x to the patient's Right,
y Anterior, z Superior), in whatever axis order the converter chose. ``nibabel.as_closest_canonical``
reorders and flips the axes to RAS, so voxel axis i runs left -> right, j posterior -> anterior and
k inferior -> superior (for an oblique acquisition, the closest such axes: no resampling).

Each slice ``data[:, :, k]`` (k increasing = feet to head, the same order DICOM series sort in) is
turned into the view every radiologist reads axial CT in, looking up from the patient's feet:
anterior at the top of the image, the patient's right on the image's left. With rows = j and
columns = i that is ``data[::-1, ::-1, k].T``: image row 0 is the most anterior voxel row and image
column 0 the most right-hand voxel column.

Voxel values are taken as HU after the header's scaling (``get_fdata``), as CT converters
(dcm2niix, ...) write them. Free-text header fields (``descrip``, ``aux_file``, ``db_name``) may
hold identifiers and are never read.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from ctscribe.ct.dicom import CTReadError, CTSlice, opaque_key


def _load(path: str | os.PathLike) -> nib.Nifti1Image:
    try:
        image = nib.load(os.fspath(path))
    except FileNotFoundError:
        raise CTReadError("no such file") from None
    except Exception:  # nibabel raises many types on malformed files; any of them means unreadable
        raise CTReadError("not a readable NIfTI file") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise CTReadError("not a NIfTI image")
    return image


def read_nifti(path: str | os.PathLike) -> list[CTSlice]:
    """Every axial slice of a 3-D NIfTI volume, feet to head, in HU and radiological view.

    Raises :class:`ctscribe.ct.dicom.CTReadError` for unreadable files and anything not 3-D (a 4-D
    time series is not one CT volume; a trailing axis of length 1 is dropped).
    """
    image = _load(path)
    dimensions = len(image.shape) - (image.shape[3:] == (1,))  # a trailing axis of 1 does not count
    if dimensions != 3:
        raise CTReadError(f"a {dimensions}-D image, not a 3-D CT volume")
    try:
        # Reorienting reads the voxels, so a truncated file fails here.
        canonical = nib.as_closest_canonical(image)
        data = np.asarray(canonical.get_fdata(dtype=np.float32))
    except Exception:  # see _load
        raise CTReadError("cannot read the voxel data (corrupt or truncated)") from None
    data = data.reshape(data.shape[:3])
    shape = data.shape
    zooms = [float(zoom) for zoom in canonical.header.get_zooms()[:3]]
    source = os.fspath(path)
    series_key = opaque_key(source)
    meta = {
        "format": "NIfTI",
        "rows": int(shape[1]),
        "columns": int(shape[0]),
        "frames": int(shape[2]),
        "pixel_spacing": [zooms[1], zooms[0]],  # between rows (j), between columns (i)
        "slice_thickness": zooms[2],
    }
    affine = canonical.affine
    return [
        CTSlice(
            source=source,
            frame=k,
            position=float((affine @ [0.0, 0.0, k, 1.0])[2]),  # world z (superior) of the slice
            instance_number=None,
            series_key=series_key,
            body_part=None,
            body_part_from=None,
            safe_meta=dict(meta),
            hu=np.ascontiguousarray(data[::-1, ::-1, k].T),
        )
        for k in range(shape[2])
    ]
