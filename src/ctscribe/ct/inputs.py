"""What ``ctscribe predict`` (and ``serve``) read: CT inputs of every kind as windowed 8-bit images.

:func:`iter_inputs` expands the paths a user gives into :class:`InputItem` s, one per image or chosen
slice, in a fixed order, so a run can be resumed by :attr:`InputItem.key`:

- image files (``.png .jpg .jpeg .bmp .tif .tiff .webp``): decoded by
  :func:`ctscribe.ct.images.open_image`, the one image path, and not windowed (their pixels are
  already display greys); ``window`` is None;
- DICOM files (``.dcm`` or the ``DICM`` preamble) and NIfTI volumes (``.nii``, ``.nii.gz``): read as
  HU, slices chosen by ``slices``, windowed by ``window``;
- folders, recursively, in sorted order (hidden files and DICOMDIR skipped): their images and NIfTI
  volumes first, then their DICOM files grouped into series (by SeriesInstanceUID, across
  subfolders) and each series sorted by slice position, whatever the file order;
- a prepared split JSON (``test.json`` from ``ctscribe prepare``): one item per record, with the
  record's prompt, reference caption and id; image paths are relative to the JSON's folder.

A single DICOM file is a series of its own frames: to read a series, give its folder.

One bad input never stops the iteration: a missing path, a corrupt or truncated file, a non-CT DICOM
or an unsupported transfer syntax becomes an item with ``error`` set, and the next input follows.
Only a bad ``window`` or ``slices`` spec raises (ValueError), before anything is read.

``auto`` windowing is decided once per series, on its middle slice (or from its body part), so all
slices of a series share one window, as a radiologist reads them; only when that slice cannot be
decoded does each slice decide for itself. Items carry no DICOM header content: ``source`` is the
path as the user gave it (joined with the file's path inside a given folder) and errors are generic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ctscribe.conversation.records import record_prompt, record_text
from ctscribe.ct.dicom import (
    CTReadError,
    CTSlice,
    SliceHeader,
    group_series,
    read_dicom,
    read_dicom_headers,
)
from ctscribe.ct.images import BadImageError, open_image, to_rgb
from ctscribe.ct.nifti import read_nifti
from ctscribe.ct.options import InputOptions
from ctscribe.ct.windows import WindowSpec, apply_window, choose_auto_window, parse_window

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_PREAMBLE = 128  # bytes before the b"DICM" marker of a DICOM Part 10 file
SLICE_CHOICES = "'middle', 'all' or 'every:K' (K a whole number >= 1)"


@dataclass(frozen=True)
class SliceSelection:
    """Which slices of a volume or series to describe: ``middle``, ``all`` or every ``step``-th."""

    mode: str
    step: int = 1

    def pick(self, count: int) -> list[int]:
        """Indices into a sorted series of ``count`` slices; ``middle`` is ``count // 2``."""
        if count == 0:
            return []
        if self.mode == "middle":
            return [count // 2]
        return list(range(0, count, self.step))


def parse_slices(spec: str) -> SliceSelection:
    """``middle``, ``all`` or ``every:K``; ValueError naming the choices otherwise."""
    text = spec.strip().lower()
    if text in ("middle", "all"):
        return SliceSelection(text)
    kind, _, step = text.partition(":")
    if kind == "every" and step.isdecimal() and int(step) >= 1:
        return SliceSelection("every", int(step))
    raise ValueError(f"unknown slice selection {spec!r}: expected {SLICE_CHOICES}")


@dataclass(frozen=True)
class InputItem:
    """One image for the model, or the reason an input could not become one.

    ``image`` is 8-bit RGB, windowed, before :func:`ctscribe.ct.images.prepare_image` (the caller
    runs it). ``slice_index`` is the slice's place in its sorted series or volume (None for plain
    images). ``prompt``, ``reference`` and ``record_id`` come from split JSON records only.
    """

    source: str
    slice_index: int | None = None
    window: str | None = None
    image: Image.Image | None = None
    error: str | None = None
    prompt: str | None = None
    reference: str | None = None
    record_id: str | None = None

    @property
    def key(self) -> str:
        """Stable across runs over the same paths: what a resumed run skips by."""
        return self.source if self.slice_index is None else f"{self.source}#{self.slice_index}"


_Window = tuple[float, float, str]  # width, level, label for InputItem.window


def _auto_window(ct: CTSlice) -> _Window:
    auto = choose_auto_window(ct.hu, ct.body_part, ct.body_part_from or "BodyPartExamined")
    spec = WindowSpec(auto.name, auto.width, auto.level)
    return auto.width, auto.level, f"{spec.label} (auto: {auto.reason})"


def volume_items(
    slices: Sequence[SliceHeader],
    load: Callable[[int], CTSlice],
    window: WindowSpec,
    chosen: Sequence[int],
) -> Iterator[InputItem]:
    """Items of the ``chosen`` slices (indices) of one sorted series or volume; ``load(i)`` decodes
    slice i. Predict and ``ctscribe study`` share it, so a slice is windowed the same in both."""
    middle_index, middle = len(slices) // 2, None
    fixed: _Window | None = None
    if window.width is not None and window.level is not None:
        fixed = (window.width, window.level, window.label)
    else:
        try:
            middle = load(middle_index)
            fixed = _auto_window(middle)
        except CTReadError:
            pass  # each slice decides for itself below
    for index in chosen:
        source = slices[index].source
        try:
            ct = middle if index == middle_index and middle is not None else load(index)
        except CTReadError as error:
            yield InputItem(source=source, slice_index=index, error=str(error))
            continue
        width, level, label = fixed or _auto_window(ct)
        grey = Image.fromarray(apply_window(ct.hu, width, level), mode="L")
        yield InputItem(source=source, slice_index=index, window=label, image=grey.convert("RGB"))


def _image_item(path: Path, source: str, **record: str | None) -> InputItem:
    try:
        image = to_rgb(open_image(path))
    except BadImageError as error:
        return InputItem(source=source, error=str(error), **record)
    return InputItem(source=source, image=image, **record)


def _dicom_items(
    sources: Sequence[str], window: WindowSpec, selection: SliceSelection
) -> Iterator[InputItem]:
    headers: list[SliceHeader] = []
    for source in sources:
        try:
            headers.extend(read_dicom_headers(source))
        except CTReadError as error:
            yield InputItem(source=source, error=str(error))
    for series in group_series(headers):

        def load(index: int, series: list[SliceHeader] = series) -> CTSlice:
            return read_dicom(series[index].source, frames=[series[index].frame])[0]

        yield from volume_items(series, load, window, selection.pick(len(series)))


def _nifti_items(source: str, window: WindowSpec, selection: SliceSelection) -> Iterator[InputItem]:
    try:
        slices = read_nifti(source)
    except CTReadError as error:
        yield InputItem(source=source, error=str(error))
        return
    yield from volume_items(slices, slices.__getitem__, window, selection.pick(len(slices)))


def _split_items(path: Path, source: str) -> Iterator[InputItem]:
    """Items of a prepared split JSON: LLaMA-Factory sharegpt records as ctscribe prepare writes them."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        yield InputItem(source=source, error="not a readable split JSON file")
        return
    if not isinstance(records, list):
        yield InputItem(source=source, error="not a split JSON file: expected a list of records")
        return
    folder = Path(source).parent
    for number, record in enumerate(records):
        images = record.get("images") if isinstance(record, dict) else None
        prompt = record_prompt(record) if isinstance(record, dict) else None
        if (
            not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], str))
            or prompt is None
        ):
            yield InputItem(
                source=f"{source}#record{number}", error="bad record: expected one image and a prompt"
            )
            continue
        record_id = record.get("id")
        yield _image_item(
            path.parent / images[0],
            os.fspath(folder / images[0]),
            prompt=prompt,
            reference=record_text(record, "assistant"),
            record_id=None if record_id is None else str(record_id),
        )


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(DICOM_PREAMBLE + 4)[DICOM_PREAMBLE:] == b"DICM"
    except OSError:
        return False


def file_kind(path: Path) -> str | None:
    """``image``, ``nifti``, ``dicom``, ``json`` or None (not an input) for a file."""
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".dcm") or (name != "dicomdir" and _has_dicom_preamble(path)):
        return "dicom"
    return None


def walk_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` in sorted order, skipping hidden files and folders (``.DS_Store``, ``._x``)."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def _folder_items(root: Path, window: WindowSpec, selection: SliceSelection) -> Iterator[InputItem]:
    dicom_files: list[str] = []
    found = False
    for path in walk_files(root):
        kind = file_kind(path)
        source = os.fspath(path)
        if kind == "image":
            found = True
            yield _image_item(path, source)
        elif kind == "nifti":
            found = True
            yield from _nifti_items(source, window, selection)
        elif kind == "dicom":
            found = True
            dicom_files.append(source)
    if not found:
        yield InputItem(source=os.fspath(root), error="no images, DICOM or NIfTI files in this folder")
    yield from _dicom_items(dicom_files, window, selection)


def iter_inputs(
    paths: Sequence[str | os.PathLike], window: str = InputOptions.window, slices: str = InputOptions.slices
) -> Iterator[InputItem]:
    """Every image or chosen slice of ``paths``, windowed; see the module docstring.

    ``window`` is ``auto``, a preset or ``WIDTH/LEVEL`` (:func:`ctscribe.ct.windows.parse_window`);
    ``slices`` is ``middle``, ``all`` or ``every:K``. Both are checked before anything is read.
    """
    spec = parse_window(window)
    selection = parse_slices(slices)
    return _iter_inputs([Path(path) for path in paths], spec, selection)


def _iter_inputs(paths: list[Path], window: WindowSpec, selection: SliceSelection) -> Iterator[InputItem]:
    for path in paths:
        source = os.fspath(path)
        if path.is_dir():
            yield from _folder_items(path, window, selection)
        elif not path.is_file():
            yield InputItem(source=source, error="no such file or folder")
        elif (kind := file_kind(path)) == "image":
            yield _image_item(path, source)
        elif kind == "nifti":
            yield from _nifti_items(source, window, selection)
        elif kind == "json":
            yield from _split_items(path, source)
        elif kind == "dicom":
            yield from _dicom_items([source], window, selection)
        else:
            yield InputItem(
                source=source,
                error="unsupported file: expected an image (" + " ".join(IMAGE_SUFFIXES) + "), a DICOM file, "
                "a NIfTI volume (.nii, .nii.gz), a folder or a split JSON",
            )
