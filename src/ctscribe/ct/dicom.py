"""Reading CT from DICOM: Hounsfield units, slice positions and nothing that identifies a patient.

**Identifiers never leave this module.** A DICOM header carries the patient and everyone around them
(PS3.15 Annex E): names, IDs, birth date, age, addresses, accession and study numbers, dates and times,
every UID, institution and department, physicians and operators, station names and device serial
numbers, free-text descriptions and comments, and private tags, whose content no one can vouch for.
What this module returns, :class:`SliceHeader` and :class:`CTSlice`, holds only:

- pixels as HU, the slice's position in mm along its normal, the instance number and frame index;
- ``series_key``: a keyed hash of SeriesInstanceUID, with a key drawn at random per process, so slices
  of one series group together while the key cannot be linked back to the UID, or across runs;
- ``body_part``: BodyPartExamined when it is a well-formed code string (``HEAD``, never free text),
  or else one word of a fixed vocabulary (:data:`ctscribe.ct.windows.BODY_PART_PRESETS`) found in
  StudyDescription, SeriesDescription or ProtocolName; ``body_part_from`` names that tag;
- ``safe_meta``: technical fields only (modality, size, pixel spacing, slice thickness, kVp, transfer
  syntax name, body part), each parsed into a number or a fixed name, never copied as text.

Error messages (:class:`CTReadError`) are generic reasons and never quote a tag value; they are raised
``from None`` so a logged traceback cannot carry pydicom's own messages. pydicom warns *and logs*
invalid values verbatim (``Invalid value for VR UI: '...'``), so while this module reads a file its
warnings are ignored and its log records dropped (a filter on pydicom's loggers, active only then).

**Only CT is read.** Other modalities (MR, US, NM, CR, ...) are refused with ``modality MR, not CT``:
their pixel values are not Hounsfield units, so CT windows are meaningless on them, and the model has
only ever seen CT. A file counts as CT when Modality is CT or, without a Modality, its SOP class is a
CT image storage class.

HU come from ``pydicom.pixels.apply_modality_lut`` for classic CT; Enhanced CT (multi-frame) keeps
rescale slope and intercept, plane positions and orientation in its per-frame and shared functional
group sequences, read frame by frame here (per-frame first). Compressed transfer syntaxes decode
through the pylibjpeg plugins (JPEG Lossless, JPEG-LS, JPEG 2000, HTJ2K) or GDCM; a missing decoder is
a :class:`CTReadError` naming the transfer syntax and what to install. Only DICOM Part 10 files (with
the ``DICM`` preamble) are read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder, iter_pixels
from pydicom.uid import UID

from ctscribe.ct.windows import find_body_part

CT_STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}
# Modality defined terms (PS3.3 C.7.3.1.1.1) an error message may name; anything else is "not CT".
KNOWN_MODALITIES = {
    *("AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "DG", "DOC", "DX", "ECG", "EPS", "ES", "FID"),
    *("GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "MG", "MR", "M3D", "NM"),
    *("OAM", "OCT", "OP", "OPM", "OPT", "OPV", "OSS", "OT", "PLAN", "PR", "PT", "PX", "REG", "RESP"),
    *("RF", "RG", "RTDOSE", "RTIMAGE", "RTPLAN", "RTRECORD", "RTSTRUCT", "RWV", "SEG", "SM", "SMR"),
    *("SR", "SRF", "STAIN", "TG", "US", "VA", "XA", "XC"),
}
# A code string (VR CS): upper-case letters, digits, space and underscore, at most 16 characters.
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{1,16}$")
DESCRIPTION_TAGS = ("StudyDescription", "SeriesDescription", "ProtocolName")
# More frames than any CT file holds (a multi-phase cardiac Enhanced CT has a few thousand): a damaged
# NumberOfFrames must not make the reader list millions of slices.
MAX_FRAMES = 20_000
INSTALL_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"

_OPAQUE_KEY = secrets.token_bytes(16)  # per process: series keys cannot be linked to UIDs or across runs
_READING: ContextVar[bool] = ContextVar("ctscribe_reading_dicom", default=False)


class CTReadError(ValueError):
    """A CT file that cannot be used; ``str()`` is a generic reason that never quotes header content."""


class _DropWhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _READING.get()


# On pydicom's logger and its children that exist now (pixels.utils, decoders): filters do not inherit.
for _name in ["pydicom", *(name for name in logging.root.manager.loggerDict if name.startswith("pydicom."))]:
    logging.getLogger(_name).addFilter(_DropWhileReading())


@contextmanager
def _reading() -> Iterator[None]:
    """Silence pydicom's warnings and log records (they quote header values) while a file is read, and
    turn any failure on malformed values into a :class:`CTReadError`.

    pydicom converts elements lazily, so a damaged value (an unknown VR, a text where a number goes)
    fails on first access, with any of many exception types: for an untrusted file each of them
    means the file cannot be used, never a crash of the caller's loop over inputs.
    """
    token = _READING.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except CTReadError:
        raise
    except Exception:
        raise CTReadError("unreadable DICOM file (corrupt header values)") from None
    finally:
        _READING.reset(token)


@dataclass(frozen=True)
class SliceHeader:
    """Everything about one slice except its pixels: enough to group, sort and select before decoding."""

    source: str  # the file path as the caller gave it, never header content
    frame: int  # 0-based frame index within the file (always 0 for classic single-frame CT)
    position: float | None  # mm along the slice normal, increasing to superior for axial slices
    instance_number: int | None
    series_key: str  # opaque: a keyed hash of SeriesInstanceUID, never the UID
    body_part: str | None  # a code string such as HEAD, or a vocabulary word from a description
    body_part_from: str | None  # the tag body_part came from: BodyPartExamined, StudyDescription, ...
    safe_meta: dict[str, Any]


@dataclass(frozen=True)
class CTSlice(SliceHeader):
    """One axial (or other) CT slice in Hounsfield units, with its safe header fields."""

    hu: np.ndarray = field(repr=False, kw_only=True)  # float32, rows x columns


H = TypeVar("H", bound=SliceHeader)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def _numbers(value: Any, count: int) -> list[float] | None:
    """``count`` finite numbers from a multi-valued element, or None."""
    try:
        items = list(value)
    except TypeError:
        return None
    numbers = [_number(item) for item in items]
    if len(numbers) != count or any(number is None for number in numbers):
        return None
    return [n for n in numbers if n is not None]


def _code_string(value: Any) -> str | None:
    text = str(value).strip() if isinstance(value, str) else ""
    return text if _CODE_STRING.match(text) else None


def opaque_key(text: str) -> str:
    """A keyed hash of ``text`` (a UID, a path) that groups equal inputs within this process only."""
    return hashlib.blake2b(text.encode(), key=_OPAQUE_KEY, digest_size=8).hexdigest()


def _frame_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of a functional group ``sequence`` for ``frame``: per-frame, else shared."""
    for groups_name, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_name)
        if groups is not None and index < len(groups):
            items = groups[index].get(sequence)
            if items:
                return items[0]
    return None


def _is_enhanced(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _frame_attribute(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from the frame's functional group ``sequence`` (Enhanced CT), else the top level."""
    if _is_enhanced(ds):
        item = _frame_group(ds, frame, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return ds.get(keyword)


def _position(ds: Dataset, frame: int) -> float | None:
    """ImagePositionPatient projected on the slice normal (row x column direction).

    The normal's sign is chosen so its largest component is positive, so axial slices sort from feet
    to head (and sagittal ones right to left, coronal ones front to back) whichever way the rows run.
    """
    orientation = _numbers(
        _frame_attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
    )
    origin = _numbers(_frame_attribute(ds, frame, "PlanePositionSequence", "ImagePositionPatient"), 3)
    if orientation is None or origin is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return None
    normal /= length
    if normal[int(np.argmax(np.abs(normal)))] < 0:
        normal = -normal
    return float(np.dot(origin, normal))


def _body_part(ds: Dataset) -> tuple[str | None, str | None]:
    """(body part, tag it came from); see the module docstring for why only these forms pass."""
    examined = _code_string(ds.get("BodyPartExamined"))
    if examined is not None and find_body_part(examined) is not None:
        return examined, "BodyPartExamined"
    for tag in DESCRIPTION_TAGS:
        word = find_body_part(str(ds.get(tag) or ""))
        if word is not None:
            return word, tag
    return (examined, "BodyPartExamined") if examined is not None else (None, None)


def _transfer_syntax(ds: Dataset) -> UID | None:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return UID(str(uid)) if uid else None


def _syntax_name(uid: UID | None) -> str:
    """The standard name of a transfer syntax; a private one is only called unknown."""
    if uid is None:
        return "unknown"
    return uid.name if uid.is_transfer_syntax and uid.name != str(uid) else "unknown"


def _check_decoder(uid: UID | None) -> None:
    """Refuse, before any pixel is read, a compressed syntax no installed plugin can decode."""
    if uid is None or not uid.is_transfer_syntax or not uid.is_compressed:
        return
    name = _syntax_name(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise CTReadError(f"transfer syntax {name} is not supported (no decoder exists for it)") from None
    if not decoder.is_available:
        raise CTReadError(f"no decoder installed for transfer syntax {name}: {INSTALL_HINT}")


def _check_ct(ds: Dataset) -> None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    is_ct = modality == "CT" or (not modality and str(ds.get("SOPClassUID", "")) in CT_STORAGE_CLASSES)
    if not is_ct:
        named = f"modality {modality}" if modality in KNOWN_MODALITIES else "no or unknown modality"
        raise CTReadError(f"{named}, not CT")
    if _number(ds.get("Rows")) is None or _number(ds.get("Columns")) is None:
        raise CTReadError("no image in this DICOM file")
    samples = _number(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CTReadError("colour image, not a greyscale CT slice")


def _safe_meta(ds: Dataset, frame: int) -> dict[str, Any]:
    spacing = _numbers(_frame_attribute(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thickness = _number(_frame_attribute(ds, frame, "PixelMeasuresSequence", "SliceThickness"))
    return {
        "format": "DICOM",
        "modality": "CT",
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": _frame_count(ds),
        "pixel_spacing": spacing,
        "slice_thickness": thickness,
        "kvp": _number(_frame_attribute(ds, frame, "CTXRayDetailsSequence", "KVP")),
        "transfer_syntax": _syntax_name(_transfer_syntax(ds)),
        "body_part_examined": _code_string(ds.get("BodyPartExamined")),
    }


def _frame_count(ds: Dataset) -> int:
    count = _number(ds.get("NumberOfFrames", 1))
    if count is not None and count > MAX_FRAMES:
        raise CTReadError("implausible number of frames (damaged header)")
    return int(count) if count is not None and count >= 1 else 1


def _read_header(path: str | os.PathLike) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise CTReadError("no such file") from None
    except IsADirectoryError:
        raise CTReadError("a folder, not a DICOM file") from None
    except InvalidDicomError:
        raise CTReadError("not a DICOM file (no DICM preamble)") from None
    except Exception:  # pydicom raises many types on malformed headers; any of them means unreadable
        raise CTReadError("unreadable DICOM header (corrupt or truncated file)") from None


def _headers(ds: Dataset, source: str) -> list[SliceHeader]:
    _check_ct(ds)
    _check_decoder(_transfer_syntax(ds))
    body_part, body_part_from = _body_part(ds)
    instance = _number(ds.get("InstanceNumber"))
    series_key = opaque_key(str(ds.get("SeriesInstanceUID", "") or ""))
    return [
        SliceHeader(
            source=source,
            frame=frame,
            position=_position(ds, frame),
            instance_number=None if instance is None else int(instance),
            series_key=series_key,
            body_part=body_part,
            body_part_from=body_part_from,
            safe_meta=_safe_meta(ds, frame),
        )
        for frame in range(_frame_count(ds))
    ]


def read_dicom_headers(path: str | os.PathLike) -> list[SliceHeader]:
    """One :class:`SliceHeader` per frame, without decoding pixels; :class:`CTReadError` if unusable.

    Checks everything that can be checked without the pixels (DICOM, CT, greyscale, decoder
    installed), so a folder of hundreds of slices can be sorted and a few chosen before any decoding.
    """
    with _reading():
        return _headers(_read_header(path), os.fspath(path))


def _to_hu(raw: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    if _is_enhanced(ds):
        group = _frame_group(ds, frame, "PixelValueTransformationSequence")
        item = ds if group is None else group
        slope = _number(item.get("RescaleSlope", 1))
        intercept = _number(item.get("RescaleIntercept", 0))
        if slope is None or intercept is None:
            raise CTReadError("bad rescale slope or intercept")
        return (raw.astype(np.float64) * slope + intercept).astype(np.float32)
    return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)


def read_dicom(path: str | os.PathLike, frames: Iterable[int] | None = None) -> list[CTSlice]:
    """The CT slices of one DICOM file (one per frame, in file order), in HU.

    ``frames`` picks 0-based frames to decode (all by default), so a long multi-frame file is not
    decoded whole for one slice. Raises :class:`CTReadError` for anything unusable.
    """
    with _reading():
        ds = _read_header(path)
        headers = _headers(ds, os.fspath(path))
        wanted = list(range(len(headers)) if frames is None else frames)
        if any(not 0 <= frame < len(headers) for frame in wanted):
            raise CTReadError(f"frame out of range: the file has {len(headers)}")
        try:
            arrays = list(iter_pixels(path, indices=wanted))
        except Exception:  # decoders raise many types on bad data; any of them means unusable pixels
            raise CTReadError("cannot decode the pixel data (corrupt or truncated)") from None
        slices = []
        for frame, raw in zip(wanted, arrays, strict=True):
            if raw.shape != (int(ds.Rows), int(ds.Columns)):
                raise CTReadError("pixel data does not match the image size")
            header = headers[frame]
            values = {f.name: getattr(header, f.name) for f in fields(SliceHeader)}
            slices.append(CTSlice(**values, hu=_to_hu(raw, ds, frame)))
        return slices


def _sort_key(header: SliceHeader) -> tuple:
    return (
        header.position is None,
        header.position or 0.0,
        header.instance_number is None,
        header.instance_number or 0,
        header.source,
        header.frame,
    )


def group_series(slices: Iterable[H]) -> list[list[H]]:
    """Slices grouped by series (in order of first appearance), each sorted by position.

    Slices without a position follow those with one, by instance number, then file and frame.
    """
    groups: dict[str, list[H]] = {}
    for item in slices:
        groups.setdefault(item.series_key, []).append(item)
    return [sorted(group, key=_sort_key) for group in groups.values()]


def read_series(paths: Sequence[str | os.PathLike]) -> list[list[CTSlice]]:
    """Every slice of ``paths`` (given in any order), one list per series, each sorted by position.

    Raises :class:`CTReadError` naming the first unusable file (by its file name only).
    """
    slices: list[CTSlice] = []
    for path in paths:
        try:
            slices.extend(read_dicom(path))
        except CTReadError as error:
            raise CTReadError(f"{Path(path).name}: {error}") from None
    return group_series(slices)
