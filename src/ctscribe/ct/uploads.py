"""Reading a clinician's uploads into the slices the page shows and the image it sends the model.

DICOM and NIfTI go through the same reader and CT windowing as ``ctscribe predict``
(:func:`ctscribe.ct.inputs.iter_inputs`: every slice of a multi-frame file, series or volume in
position order, ``auto`` or a chosen window), and the slice the clinician picks (the middle one
first) through the one image path (:func:`ctscribe.ct.images.prepare_image`), so the model receives
the pixels it was trained on. Nothing of a DICOM header is kept: only the file name, the window and
the slice number. A web server keeps every upload in a temp folder, headers and all, so the files are
read into memory and deleted at once (:func:`take_uploads`); the decoded slices stay in memory
(:class:`Volume`), and a window change reads the held files again through a private folder that
lasts one read (:func:`load_held`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ctscribe.conversation.boxes import ImageFrame
from ctscribe.ct.images import BadImageError, ImageOptions, prepare_image
from ctscribe.ct.inputs import iter_inputs
from ctscribe.ct.windows import AUTO, CUSTOM, parse_window
from ctscribe.model_settings import DEFAULT_MAX_PIXELS
from ctscribe.models.family import ImageGrid

NO_WINDOW = "none (an image file is shown as uploaded)"
UNSUPPORTED = "unsupported file: upload a PNG or JPG image, DICOM file(s) of one series, or a NIfTI volume"


class UploadError(ValueError):
    """An upload the page cannot use; ``str()`` is shown on the page as it is."""


@dataclass(frozen=True)
class Upload:
    """The image the conversation is about: what is shown, what is sent, and how it was made."""

    image: Image.Image  # windowed 8-bit RGB, shown on the page
    sent: Image.Image  # the image prepared for the model, sent in the first user turn
    name: str  # the file name only, never a folder or header content
    window: str | None  # window label for DICOM/NIfTI, None for image files
    note: str = ""  # e.g. that only the first of several series is used
    slice: tuple[int, int] | None = None  # (number from 1, slices in the series) of a series or volume
    # Where the model's image lies in the image shown: a box on the model's grid maps back through it.
    frame: ImageFrame | None = None

    @property
    def slice_label(self) -> str:
        return f"{self.slice[0]} of {self.slice[1]}" if self.slice else ""

    @property
    def info(self) -> str:
        """One Markdown line for the page and the report."""
        text = f"**Image:** {self.name} · **Window:** {self.window or NO_WINDOW}"
        if self.slice:
            text += f" · **Slice:** {self.slice_label}"
        return f"{text} · {self.note}" if self.note else text


@dataclass(frozen=True)
class Volume:
    """What was uploaded, decoded and windowed, held in the session's memory (never on disk): one
    image for an image file, every readable slice in position order for a DICOM series or a NIfTI
    volume (greyscale, one byte a pixel: 300 slices of 512² hold 79 MB)."""

    slices: tuple[Image.Image, ...]
    names: tuple[str, ...]  # each slice's file name (a DICOM series has a file per slice)
    window: str | None
    total: int | None = None  # slices in the series or volume; None for a single image or slice
    numbers: tuple[int, ...] = ()  # each slice's place in it, from 0 (unreadable slices are left out)
    note: str = ""

    @property
    def middle(self) -> int:
        """The position first shown: the middle slice, as ``ctscribe predict`` picks it."""
        return len(self.slices) // 2

    def upload(self, position: int, max_pixels: int = DEFAULT_MAX_PIXELS, *, grid: ImageGrid) -> Upload:
        """The slice at ``position`` (0-based, clamped), prepared for a model of ``grid``."""
        position = min(max(0, int(position)), len(self.slices) - 1)
        image = self.slices[position].convert("RGB")
        try:
            prepared = prepare_image(image, ImageOptions(max_pixels=max_pixels), grid=grid)
        except BadImageError as error:
            raise UploadError(f"unusable image: {error}") from None
        number = (self.numbers[position] + 1, self.total) if self.total is not None else None
        return Upload(
            image, prepared.image, self.names[position], self.window, self.note, number, prepared.frame
        )


def window_spec(choice: str, custom: str = "") -> str:
    """The ``--window`` string for the selector: ``custom`` takes the W/L box, checked here so a typo
    is reported next to the box rather than as a failed read."""
    spec = (custom or "").strip() if choice == CUSTOM else (choice or AUTO)
    if not spec:
        raise UploadError("custom window: type WIDTH/LEVEL in HU, such as 400/50 or 1500/-600")
    try:
        parse_window(spec)
    except ValueError as error:
        raise UploadError(str(error)) from None
    return spec


def read_volume(paths: Sequence[str | os.PathLike], window: str = AUTO) -> Volume:
    """Read uploaded files into the images to describe, as ``ctscribe predict --slices all`` would.

    Several files are linked into one folder so the reader groups DICOM slices into series and
    orders them by position, whatever order the browser sent them in. Of several images or series,
    the first is used (the note says so).
    """
    paths = [Path(path) for path in paths if path]
    if not paths:
        raise UploadError("no file uploaded")
    if any(path.suffix.lower() == ".json" for path in paths):
        raise UploadError(UNSUPPORTED)
    if len(paths) == 1:
        items = list(iter_inputs(paths, window=window, slices="all"))
    else:
        with tempfile.TemporaryDirectory(prefix="ctscribe-upload-") as folder:
            for number, path in enumerate(paths):
                link = Path(folder) / path.name
                if link.exists():  # the same name from two folders
                    link = Path(folder) / f"{number}-{path.name}"
                link.symlink_to(path.resolve())
            items = list(iter_inputs([folder], window=window, slices="all"))
    # An image file, or the slices of one series or volume (numbered from 0), in the reader's order.
    groups: list[list] = []
    for item in items:
        if item.slice_index in (None, 0) or not groups:
            groups.append([])
        groups[-1].append(item)
    good = [group for group in groups if any(item.image is not None for item in group)]
    if not good:
        error = items[0].error if items else "nothing readable"
        raise UploadError(UNSUPPORTED if (error or "").startswith("unsupported file") else error)
    first = [item for item in good[0] if item.image is not None]
    return Volume(
        slices=tuple(item.image.convert("L") if item.window else item.image for item in first),
        names=tuple(Path(item.source).name for item in first),
        window=first[0].window,
        total=len(good[0]) if len(good[0]) > 1 else None,  # a single image or slice has no slider
        numbers=tuple(item.slice_index or 0 for item in first),
        note=f"first of {len(good)} images or series uploaded" if len(good) > 1 else "",
    )


def load_upload(
    paths: Sequence[str | os.PathLike],
    window: str = AUTO,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    grid: ImageGrid,
) -> Upload:
    """The middle slice (or the image) of the uploaded files, prepared for a model of ``grid``: what the
    page shows first."""
    volume = read_volume(paths, window)
    return volume.upload(volume.middle, max_pixels, grid=grid)


def take_uploads(paths: Sequence[str | os.PathLike]) -> list[tuple[str, bytes]]:
    """Each uploaded file's name and bytes, the file deleted from Gradio's temp folder once read (its
    per-upload folder too, when that leaves it empty): a DICOM's header names the patient."""
    held = []
    for path in map(Path, paths):
        held.append((path.name, path.read_bytes()))
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty, or already gone
            path.parent.rmdir()
    return held


def load_held(held: Sequence[tuple[str, bytes]], window: str) -> Volume:
    """:func:`read_volume` on files held in memory, written to a private folder for the one read."""
    with tempfile.TemporaryDirectory(prefix="ctscribe-upload-") as folder:
        paths = []
        for number, (name, data) in enumerate(held):
            path = Path(folder, str(number), name)  # a folder each: two uploads may share a name
            path.parent.mkdir()
            path.write_bytes(data)
            paths.append(path)
        return read_volume(paths, window)
