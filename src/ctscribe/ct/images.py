"""The one image path: every image the model sees, in training and at inference, goes through here.

Training rows (MedTrinity-25M PNG/JPEG bytes), clinicians' uploads and DICOM slices (converted to a
PIL image by the DICOM reader) all pass through :func:`prepare_image`, so the pixels the model was
trained on and the pixels it is asked about are produced by the same code and cannot drift apart.

The steps, and why each exists:

1. :func:`open_image` decodes untrusted bytes fully, with a decompression-bomb guard, and turns every
   decoder failure into :class:`BadImageError`, so one broken row or upload is a reported reason,
   never a crash or an out-of-memory kill.
2. :func:`to_rgb` maps every PIL mode (16-bit grey, float, palette, alpha, CMYK) onto RGB, the one
   input the vision towers take.
3. :func:`find_roi_box` / :func:`remove_roi_box` find and paint out the green region-of-interest
   rectangle MedTrinity draws into many images: clinicians upload plain CT, so a model trained on
   boxed images would learn to expect (and lean on) a box that is never there at inference.
4. :func:`crop_background` drops the black air around the body, which carries no information but
   would cost image tokens.
5. :func:`fit_pixel_budget` resizes to exactly the size the model family's processor would pick
   (its :class:`~ctscribe.models.family.ImageGrid`, passed in by the caller that knows the model), so
   the processor never resizes again and the token count is known before the model sees the image.
6. :func:`roi_in_model_frame` carries the green box found in step 3 through the crop and the resize
   onto the 0-1000 grid of the final image: the box a grounded answer states
   (:mod:`ctscribe.conversation.boxes`).

:attr:`PreparedImage.full_frame` keeps the image as it was before steps 4 and 5 (box removed, not
cropped or resized): near-duplicate hashing looks at that, see :mod:`ctscribe.prepare.dedupe`.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from ctscribe.conversation.boxes import GridBox, ImageFrame, PixelBox, to_grid
from ctscribe.ct.options import ImageOptions
from ctscribe.models.family import ImageGrid

# Larger than any CT slice (512-1024 px square) or scanned film, far below what would exhaust memory
# when decoded as RGB (50 M px x 3 bytes = 150 MB). Checked from the header, before decoding.
MAX_DECODED_PIXELS = 50_000_000

# A pixel of MedTrinity's (0, 255, 0) box, still recognisable after JPEG re-encoding (measured on the
# phantom set: box pixels keep g >= 185 and g - max(r, b) >= 95 at JPEG quality 92). Grey CT has
# g == r == b and H&E histology is pink/purple (g below r), so neither can pass.
GREEN_MIN = 150
GREEN_MARGIN = 80
ROI_MIN_SIDE = 8  # shortest box side in pixels; shorter green runs are stray pixels, not a box
ROI_BAND = 3  # an outline side must show green within this many pixels of the box edge ...
ROI_MIN_COVERAGE = 0.6  # ... along at least this share of its length, on all four sides
ROI_LINE_WIDTH = 2  # MedTrinity draws its boxes 2 px wide
ROI_HALO = 1  # repaint this many pixels either side of the line too (JPEG ringing, off-by-one boxes)
INPAINT_SMOOTHING_PASSES = 4  # neighbour-mean passes that soften the seam of the nearest-pixel fill
# An image counts as grey if, away from the box and its JPEG colour bleed (GREY_CHECK_HALO px), fewer
# than GREY_MAX_COLOUR_SHARE of its pixels have channels further apart than GREY_TOLERANCE.
GREY_CHECK_HALO = 16
GREY_TOLERANCE = 24
GREY_MAX_COLOUR_SHARE = 0.01

# Background crop: work on a copy with the long side near this size, so noise is averaged away and
# the connected-component search stays cheap on a 4096 x 4096 scan.
CROP_WORK_SIDE = 128
# The frame's median grey is the air level; above this it is not air (a lung window shows air ~60).
MAX_AIR_LEVEL = 100
MIN_BODY_FRACTION = 0.02  # a bright region smaller than this is text or a marker, not a body
MIN_CROP_GAIN = 0.05  # cropping away less than this share of the area is not worth a changed frame


class BadImageError(ValueError):
    """An image that cannot be used; ``str()`` is the reason, short enough for a log line or a reply."""


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the model, with what was found and changed on the way (for data reports)."""

    image: Image.Image  # RGB, both sides multiples of 28: exactly what the model sees
    # Green box found, inclusive corners (x0, y0, x1, y1) in original pixels as ImageDraw draws them.
    roi_box: tuple[int, int, int, int] | None
    # Background crop applied, (left, upper, right, lower) in original pixels as Image.crop takes it.
    crop_box: tuple[int, int, int, int] | None
    image_tokens: int  # (width / 28) * (height / 28)
    # The green box on the 0-1000 grid of ``image`` (after crop and resize), clipped where the crop
    # cuts it; None without a box or when the crop leaves none of it (roi_in_model_frame).
    roi_grid: GridBox | None
    # RGB at the original size, green box removed if the options say so, before the background crop
    # and the resize: what near-duplicate hashing looks at (ctscribe.prepare.dedupe explains why).
    full_frame: Image.Image

    @property
    def frame(self) -> ImageFrame:
        """Where the model's image lies in the user's image: how its grid boxes map back to pixels."""
        return ImageFrame(*self.full_frame.size, self.crop_box)


# ---------------------------------------------------------------------------------------------
# Decoding


def _load_checked(image: Image.Image) -> Image.Image:
    """Refuse oversized images from their header, then decode every pixel now.

    Decoding eagerly means a truncated or corrupt file fails here, with a reason, rather than later
    inside a data loader worker or the processor.
    """
    width, height = image.size
    if width * height > MAX_DECODED_PIXELS:
        raise BadImageError(f"image too large: {width} x {height} pixels")
    try:
        image.load()
    # PIL's decoders raise a zoo of types on malformed input (OSError, SyntaxError, ValueError,
    # EOFError, struct.error, IndexError, zlib.error, ...); for untrusted bytes any failure means
    # the image cannot be used.
    except Exception as exc:
        raise BadImageError(f"cannot decode image: {exc}") from exc
    return image


def open_image(data: bytes | str | os.PathLike) -> Image.Image:
    """Decode image bytes or a file fully; raise :class:`BadImageError` with a reason if unusable.

    PIL's global ``LOAD_TRUNCATED_IMAGES`` stays off: a truncated file would otherwise decode into a
    partly grey image and silently become a training example.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) == 0:
            raise BadImageError("cannot decode image: no data")
        source: io.BytesIO | str | os.PathLike = io.BytesIO(data)
    else:
        source = data
    try:
        with warnings.catch_warnings():
            # PIL only warns between its own limit and twice it; make that a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"image too large: over {MAX_DECODED_PIXELS:,} pixels") from exc
    except FileNotFoundError as exc:
        raise BadImageError(f"cannot read image: no such file {os.fspath(data)!r}") from exc
    except Exception as exc:  # see _load_checked: any failure to parse the header is a bad image
        raise BadImageError(f"cannot decode image: {exc}") from exc
    with image:
        loaded = _load_checked(image)
        try:
            # Phones and some viewers store rotation as an EXIF tag: show the model what a person sees.
            return ImageOps.exif_transpose(loaded)
        except Exception as exc:
            raise BadImageError(f"cannot decode image: bad EXIF orientation ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# Colour


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch min..max to 0..255: 16-bit and float grey have no fixed display range.

    DICOM slices should be windowed before they get here; this only keeps other wide-range images
    visible instead of clipping them to white.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """Flatten transparency onto black, the colour of the air around a body in CT."""
    background = Image.new("RGB", rgba.size, (0, 0, 0))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB, the one input the vision tower takes."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _rescale_to_uint8(np.asarray(image))
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        if mode == "La":  # premultiplied alpha: PIL converts it to nothing but LA
            image = image.convert("LA")
        if image.mode in ("RGBA", "RGBa", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            return _composite_on_black(image.convert("RGBA"))
        return image.convert("RGB")
    except ValueError as exc:  # a mode PIL has no conversion for: one bad image, not a crash
        raise BadImageError(f"unsupported image mode: {mode}") from exc


# ---------------------------------------------------------------------------------------------
# MedTrinity's green region-of-interest box


def _green_mask(rgb: np.ndarray) -> np.ndarray:
    channels = rgb.astype(np.int16)
    r, g, b = channels[..., 0], channels[..., 1], channels[..., 2]
    return (g > GREEN_MIN) & (g - np.maximum(r, b) > GREEN_MARGIN)


def find_roi_box(rgb: Image.Image) -> tuple[int, int, int, int] | None:
    """The outer corners ``(x0, y0, x1, y1)`` (inclusive) of a drawn green rectangle, or None.

    Found on every image, whether or not it is removed, so data reports can count boxed rows. A box
    must show long green runs on all four sides: a few green pixels, a green line or a filled green
    blob are not a region-of-interest outline.
    """
    mask = _green_mask(np.asarray(rgb.convert("RGB")))
    if mask.sum() < 4 * ROI_MIN_SIDE:
        return None
    rows = np.flatnonzero(mask.sum(axis=1) >= ROI_MIN_SIDE)
    cols = np.flatnonzero(mask.sum(axis=0) >= ROI_MIN_SIDE)
    if rows.size == 0 or cols.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if bottom - top + 1 < ROI_MIN_SIDE or right - left + 1 < ROI_MIN_SIDE:
        return None
    inner = mask[top : bottom + 1, left : right + 1]
    sides = (
        inner[:ROI_BAND].any(axis=0),
        inner[-ROI_BAND:].any(axis=0),
        inner[:, :ROI_BAND].any(axis=1),
        inner[:, -ROI_BAND:].any(axis=1),
    )
    if min(side.mean() for side in sides) < ROI_MIN_COVERAGE:
        return None
    # An outline is hollow: a filled green blob or a thick green bar is something else.
    middle = inner[ROI_BAND:-ROI_BAND, ROI_BAND:-ROI_BAND]
    if middle.size and middle.mean() > 0.5:
        return None
    return left, top, right, bottom


def _outline_band(shape: tuple[int, int], box: tuple[int, int, int, int], halo: int) -> np.ndarray:
    """The drawn outline of ``box`` plus ``halo`` pixels either side of it, clipped to ``shape``."""
    height, width = shape
    x0, y0, x1, y1 = box
    band = np.zeros(shape, dtype=bool)
    band[max(0, y0 - halo) : min(height, y1 + halo + 1), max(0, x0 - halo) : min(width, x1 + halo + 1)] = True
    inset = ROI_LINE_WIDTH + halo
    if x1 - x0 + 1 > 2 * inset and y1 - y0 + 1 > 2 * inset:
        band[y0 + inset : y1 - inset + 1, x0 + inset : x1 - inset + 1] = False
    return band


def _is_grey_apart_from(pixels: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether the image is grey (R = G = B up to JPEG noise) away from the box and its colour bleed."""
    far = ~_outline_band(pixels.shape[:2], box, GREY_CHECK_HALO)
    if not far.any():
        return False
    spread = pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2)
    return float(np.mean(spread[far] > GREY_TOLERANCE)) < GREY_MAX_COLOUR_SHARE


def remove_roi_box(rgb: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Paint the outline ``box`` (from :func:`find_roi_box`) out with the surrounding tissue.

    Clinicians upload plain CT, so the model must learn from images without the annotator's box.
    Each outline pixel, and the pixel either side of it, takes the value of the nearest pixel off
    the outline; a few neighbour-mean passes then soften the seam where the inside and outside fills
    meet. A grey image (CT) is repainted in grey: JPEG bleeds the box's green into a ~8-px chroma
    halo, which the grey (luma) channel does not carry, so the whole halo vanishes without
    repainting real tissue. Only one pixel beside the line is repainted because boxes hug their
    lesion: a wider band reaches the lesion edge and smears it outwards (measured on the phantom).
    """
    pixels = np.asarray(rgb.convert("RGB"))
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = box
    # Work on a window around the box: the fill only ever reads pixels a few steps off the outline.
    pad = ROI_HALO + INPAINT_SMOOTHING_PASSES + 2
    left, top = max(0, x0 - pad), max(0, y0 - pad)
    right, bottom = min(width, x1 + pad + 1), min(height, y1 + pad + 1)
    grey = _is_grey_apart_from(pixels, box)
    source = np.asarray(rgb.convert("L"))[..., None] if grey else pixels
    window = source[top:bottom, left:right].astype(np.float32)
    band = _outline_band(window.shape[:2], (x0 - left, y0 - top, x1 - left, y1 - top), ROI_HALO)
    if band.all():  # nothing off the outline to fill from: the "box" is the whole image
        return rgb.convert("RGB")
    _, (near_y, near_x) = ndimage.distance_transform_edt(band, return_indices=True)
    filled = window[near_y, near_x]
    for _ in range(INPAINT_SMOOTHING_PASSES):
        smoothed = ndimage.uniform_filter(filled, size=(3, 3, 1), mode="nearest")
        filled[band] = smoothed[band]
    result = source.copy()
    result[top:bottom, left:right] = np.clip(np.round(filled), 0, 255).astype(np.uint8)
    if grey:
        return Image.fromarray(result[..., 0], mode="L").convert("RGB")
    return Image.fromarray(result, mode="RGB")


# ---------------------------------------------------------------------------------------------
# Background and size


def crop_background(
    rgb: Image.Image, threshold: int = 20, margin: int = 4
) -> tuple[int, int, int, int] | None:
    """The body's bounding box ``(left, upper, right, lower)`` for ``Image.crop``, or None.

    Air around the body tells the model nothing, but it costs image tokens and shrinks the body
    within the fixed pixel budget. Air is what fills the image's frame: black in soft-tissue and bone
    windows, dark grey (~60) in a lung window. The body is the largest connected region more than
    ``threshold`` brighter than that air, found on a block-averaged copy: averaging quiets noise, and
    taking the largest region ignores text and markers in the corners. None when the frame is not
    dark (histology, a body filling the image), no body is found, or cropping would remove less than
    5% of the area, so such images keep their frame.
    """
    width, height = rgb.size
    block = max(1, -(-max(width, height) // CROP_WORK_SIDE))
    small_h, small_w = -(-height // block), -(-width // block)
    grey = np.zeros((small_h * block, small_w * block), dtype=np.float32)
    grey[:height, :width] = np.asarray(rgb.convert("L"), dtype=np.float32)
    grey[height:] = grey[height - 1]  # pad by repeating the edge, so edge blocks keep their level
    grey[:, width:] = grey[:, width - 1 : width]
    small = grey.reshape(small_h, block, small_w, block).mean(axis=(1, 3))
    frame = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    air = float(np.median(frame))
    if air > MAX_AIR_LEVEL:
        return None
    mask = ndimage.binary_opening(small > air + threshold)  # drop single-block speckle
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    body = int(np.argmax(sizes)) + 1
    if sizes[body - 1] < MIN_BODY_FRACTION * small.size:
        return None
    ys, xs = np.nonzero(labels == body)
    # Refine at full resolution inside the body's blocks plus one block of slack, so the box does not
    # depend on where block edges fall: a resized copy then crops to the same part of the body.
    x0, y0 = max(0, (int(xs.min()) - 1) * block), max(0, (int(ys.min()) - 1) * block)
    x1, y1 = min(width, (int(xs.max()) + 2) * block), min(height, (int(ys.max()) + 2) * block)
    fine = ndimage.binary_opening(grey[y0:y1, x0:x1] > air + threshold)
    rows, cols = np.flatnonzero(fine.any(axis=1)), np.flatnonzero(fine.any(axis=0))
    if rows.size == 0:
        return None
    left, upper = max(0, x0 + int(cols[0]) - margin), max(0, y0 + int(rows[0]) - margin)
    right, lower = min(width, x0 + int(cols[-1]) + 1 + margin), min(height, y0 + int(rows[-1]) + 1 + margin)
    if (right - left) * (lower - upper) > (1 - MIN_CROP_GAIN) * width * height:
        return None
    return left, upper, right, lower


def _check_shape(width: int, height: int, grid: ImageGrid) -> None:
    """Refuse shapes the model cannot take: below one token side, or beyond its resize's aspect ratio."""
    side = grid.token_side
    if min(width, height) < side:
        raise BadImageError(f"image too small: {width} x {height} pixels (needs {side} on each side)")
    if max(width, height) / min(width, height) > grid.max_aspect_ratio:
        raise BadImageError(f"aspect ratio too extreme: {width} x {height} pixels")


def budget_size(
    width: int, height: int, max_pixels: int, min_pixels: int, grid: ImageGrid
) -> tuple[int, int]:
    """``(width, height)`` that the family's processor resizes to, from its own resize rule."""
    try:
        new_height, new_width = grid.resize(height, width, min_pixels, max_pixels)
    except ValueError as exc:
        raise BadImageError(f"aspect ratio too extreme: {exc}") from exc
    return new_width, new_height


def fit_pixel_budget(image: Image.Image, max_pixels: int, min_pixels: int, *, grid: ImageGrid) -> Image.Image:
    """Resize (bicubic, as the processor does) to exactly the size the family's processor would pick.

    The processor then finds nothing to resize, so the token count is fixed here and a training image
    and an inference image of the same size are resampled once, the same way.
    """
    size = budget_size(image.width, image.height, max_pixels, min_pixels, grid)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def roi_in_model_frame(
    box: PixelBox, crop_box: tuple[int, int, int, int] | None, size: tuple[int, int]
) -> GridBox | None:
    """The inclusive pixel ``box`` of a ``size`` (width, height) image on the 0-1000 grid of the model
    image made from it by cropping to ``crop_box`` and resizing.

    The resize scales the cropped frame as a whole, so a point's fraction of each side is the same
    before and after it: the grid box is the crop-local box on the crop's grid, with no rounding to
    resized pixels in between. The crop can cut the box (it keeps the body, and a box may reach into
    the air around it): the part inside the crop is kept, and None returned when nothing is left.
    """
    left, upper, right, lower = crop_box if crop_box is not None else (0, 0, *size)
    x0, y0, x1, y1 = box
    x0, y0 = max(x0, left) - left, max(y0, upper) - upper
    x1, y1 = min(x1, right - 1) - left, min(y1, lower - 1) - upper
    if x0 > x1 or y0 > y1:
        return None
    return to_grid((x0, y0, x1, y1), right - left, lower - upper)


def prepare_image(
    data_or_image: bytes | str | os.PathLike | Image.Image,
    options: ImageOptions = ImageOptions(),
    *,
    grid: ImageGrid,
) -> PreparedImage:
    """Decode, normalise, clean and size one image exactly as a model of ``grid`` will see it.

    Raises :class:`BadImageError` for anything that cannot become a model input.
    """
    if isinstance(data_or_image, Image.Image):
        image = _load_checked(data_or_image)
    else:
        image = open_image(data_or_image)
    rgb = to_rgb(image)
    _check_shape(*rgb.size, grid)
    roi_box = find_roi_box(rgb)
    if roi_box is not None and options.roi_box == "remove":
        rgb = remove_roi_box(rgb, roi_box)
    crop_box = crop_background(rgb) if options.crop_background else None
    cropped = rgb if crop_box is None else rgb.crop(crop_box)
    final = fit_pixel_budget(cropped, options.max_pixels, options.min_pixels, grid=grid)
    return PreparedImage(
        image=final,
        roi_box=roi_box,
        crop_box=crop_box,
        image_tokens=grid.tokens(*final.size),
        roi_grid=None if roi_box is None else roi_in_model_frame(roi_box, crop_box, rgb.size),
        full_frame=rgb,
    )
