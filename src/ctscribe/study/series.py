"""A study's input as series: DICOM series, NIfTI volumes and folders of slice images, each in order.

``ctscribe study`` reads one input (a folder, a zip of one, a DICOM file, a NIfTI volume) into
:class:`Series`, each of which yields its chosen slices as windowed images on request, so a long series
is never held in memory. What it reads from DICOM goes through :mod:`ctscribe.ct.dicom`, so no header
content leaves it; a series is named here by:

- ``identity``: a hash of its files' names inside the input (never a UID), the same in every run over
  the same files, so a killed run resumes by it;
- ``source``: the folder (or volume file) holding it, as a path inside the input the user gave;
- ``order``: how its slices were put in order, stated because a wrong order would misplace findings:
  slice position along the slice normal; instance number when no slice has a position tag; file name
  when neither is there (and always for a folder of images, which carry no position).

DICOM files are grouped into series by SeriesInstanceUID (through its keyed hash), across subfolders,
so several series in one folder are reported apart. A file that belongs to no series (not DICOM, NIfTI
or an image; an unreadable header or volume) is listed in :attr:`StudyInput.skipped` with its reason;
a slice that fails to decode later is skipped within its series by the caller.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ctscribe.ct.dicom import CTReadError, CTSlice, SliceHeader, group_series, read_dicom, read_dicom_headers
from ctscribe.ct.images import BadImageError, open_image, to_rgb
from ctscribe.ct.inputs import InputItem, file_kind, volume_items, walk_files
from ctscribe.ct.nifti import read_nifti
from ctscribe.ct.windows import WindowSpec

ORDER_POSITION = "slice position (ImagePositionPatient along the slice normal)"
ORDER_VOLUME = "the volume's axis, feet to head (NIfTI affine)"
ORDER_INSTANCE = "instance number: no slice has a position tag"
ORDER_FILE_NAME = "file name: the slices carry no position"
NOT_AN_INPUT = "not a DICOM, NIfTI or image file"

Items = Callable[[Sequence[int], WindowSpec], Iterator[InputItem]]


@dataclass(frozen=True)
class Series:
    """One series or volume: how to name it, how it was ordered, and its slices on request."""

    identity: str
    source: str
    kind: str  # DICOM, NIfTI or images
    order: str
    slice_count: int
    items: Items = field(repr=False, compare=False)  # (chosen indices, window) -> windowed slices


@dataclass
class StudyInput:
    series: list[Series]
    skipped: list[dict]  # {"file": name inside the input, "reason": ...}


def _identity(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]


def _dicom_order(series: Sequence[SliceHeader]) -> str:
    without = sum(header.position is None for header in series)
    if without == 0:
        return ORDER_POSITION
    if without < len(series):
        return f"{ORDER_POSITION}; {without} slice(s) without one follow by instance number"
    if all(header.instance_number is not None for header in series):
        return ORDER_INSTANCE
    return "file name: no slice has a position tag or instance number"


def _dicom_series(headers: list[SliceHeader], name: Callable[[str], str]) -> Series:
    def load(index: int) -> CTSlice:
        return read_dicom(headers[index].source, frames=[headers[index].frame])[0]

    def items(chosen: Sequence[int], window: WindowSpec) -> Iterator[InputItem]:
        return volume_items(headers, load, window, chosen)

    names = [f"{name(h.source)}#{h.frame}" for h in headers]
    folder = os.path.commonpath([os.path.dirname(name(h.source)) or "." for h in headers])
    return Series(_identity(names), folder, "DICOM", _dicom_order(headers), len(headers), items)


def _nifti_series(path: Path, source: str, count: int) -> Series:
    def items(chosen: Sequence[int], window: WindowSpec) -> Iterator[InputItem]:
        slices = read_nifti(path)
        return volume_items(slices, slices.__getitem__, window, chosen)

    return Series(_identity([source]), source, "NIfTI", ORDER_VOLUME, count, items)


def _image_series(paths: list[Path], name: Callable[[str], str]) -> Series:
    def items(chosen: Sequence[int], window: WindowSpec) -> Iterator[InputItem]:
        for index in chosen:
            source = os.fspath(paths[index])
            try:
                yield InputItem(source, slice_index=index, image=to_rgb(open_image(paths[index])))
            except BadImageError as error:
                yield InputItem(source, slice_index=index, error=str(error))

    names = [name(os.fspath(path)) for path in paths]
    folder = os.path.dirname(names[0]) or "."
    return Series(_identity(names), folder, "images", ORDER_FILE_NAME, len(paths), items)


def read_study(root: Path, shown_as: str | None = None) -> StudyInput:
    """The series under ``root`` (a folder or one file); paths are shown as inside ``shown_as``
    (default: ``root``'s own name), never as the absolute paths of this machine."""
    shown_as = shown_as or root.name

    def name(path: str) -> str:
        relative = os.path.relpath(path, root) if root.is_dir() else ""
        return os.path.normpath(os.path.join(shown_as, relative))

    files = list(walk_files(root)) if root.is_dir() else [root]
    headers: list[SliceHeader] = []
    images: dict[Path, list[Path]] = {}
    series: list[Series] = []
    skipped: list[dict] = []
    for path in files:
        kind = file_kind(path)
        if kind == "dicom":
            try:
                headers.extend(read_dicom_headers(path))
            except CTReadError as error:
                skipped.append({"file": name(os.fspath(path)), "reason": str(error)})
        elif kind == "nifti":
            try:
                count = len(read_nifti(path))
            except CTReadError as error:
                skipped.append({"file": name(os.fspath(path)), "reason": str(error)})
                continue
            series.append(_nifti_series(path, name(os.fspath(path)), count))
        elif kind == "image":
            images.setdefault(path.parent, []).append(path)
        else:
            skipped.append({"file": name(os.fspath(path)), "reason": NOT_AN_INPUT})
    series += [_dicom_series(group, name) for group in group_series(headers)]
    series += [_image_series(sorted(paths), name) for paths in images.values()]
    return StudyInput(series, skipped)


@contextmanager
def open_study(path: Path) -> Iterator[StudyInput]:
    """:func:`read_study` of ``path``; a zip is unpacked into a temporary folder for the duration.

    zipfile drops absolute paths and ``..`` from member names, so a zip cannot write outside it.
    """
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="ctscribe-study-") as folder:
            try:
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(folder)
            except (zipfile.BadZipFile, OSError) as error:
                raise ValueError(f"{path.name}: not a readable zip file ({type(error).__name__})") from None
            yield read_study(Path(folder), shown_as=path.name)
    else:
        yield read_study(path)
