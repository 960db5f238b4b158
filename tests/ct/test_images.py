import io
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from ctscribe.conversation.boxes import GridBox, to_grid
from ctscribe.ct.images import (
    BadImageError,
    ImageOptions,
    PreparedImage,
    budget_size,
    crop_background,
    find_roi_box,
    fit_pixel_budget,
    open_image,
    prepare_image,
    remove_roi_box,
    roi_in_model_frame,
    to_rgb,
)
from ctscribe.fixtures.phantom import ROI_GREEN, TruthRow, generate_rows
from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from ctscribe.models import DEFAULT_FAMILY

ROI_TOLERANCE = 3  # pixels between a found box and the drawn one


@pytest.fixture(scope="module")
def phantom() -> list[tuple[TruthRow, bytes]]:
    """300 phantom rows of every modality, some with green boxes (PNG and JPEG), some corrupt."""
    return [(truth, data) for truth, data, _ in generate_rows(300, seed=7)]


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _expected_roi(truth: TruthRow, by_id: dict[str, TruthRow]) -> tuple[int, ...] | None:
    """The drawn box in this row's pixels: a resized duplicate carries its source's box, rescaled."""
    if truth.roi_box is None:
        return None
    if truth.duplicate_of is None:
        return tuple(truth.roi_box)
    scale = truth.width / by_id[truth.duplicate_of].width
    return tuple(round(v * scale) for v in truth.roi_box)


def _with_box(clean: Image.Image, lesion_box: list[int]) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``clean`` with a MedTrinity-style box 4 px around the lesion, as the phantom draws it."""
    x0, y0, x1, y1 = lesion_box
    box = (max(0, x0 - 4), max(0, y0 - 4), min(clean.width - 1, x1 + 4), min(clean.height - 1, y1 + 4))
    boxed = clean.copy()
    ImageDraw.Draw(boxed).rectangle(box, outline=ROI_GREEN, width=2)
    return boxed, box


def _outline(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Mask of the 2-px outline ImageDraw draws for ``box``."""
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    mask[y0 + 2 : y1 - 1, x0 + 2 : x1 - 1] = False
    return mask


# ---------------------------------------------------------------------------------------------
# Modes


def test_grey_and_palette_modes():
    assert to_rgb(Image.new("L", (40, 30), 100)).getpixel((5, 5)) == (100, 100, 100)
    assert to_rgb(Image.new("1", (40, 30), 1)).getpixel((5, 5)) == (255, 255, 255)
    rgb = Image.new("RGB", (40, 30), (200, 30, 90))
    assert to_rgb(rgb.convert("P")).getpixel((5, 5)) == pytest.approx((200, 30, 90), abs=25)
    # CMYK with no ink is white paper
    assert to_rgb(Image.new("CMYK", (40, 30), (0, 0, 0, 0))).getpixel((5, 5)) == (255, 255, 255)


def test_transparency_composites_on_black():
    rgba = Image.new("RGBA", (40, 30), (200, 100, 50, 255))
    rgba.paste((200, 100, 50, 0), (0, 0, 20, 30))
    out = to_rgb(rgba)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (0, 0, 0)  # transparent: the black of air in CT
    assert out.getpixel((30, 5)) == (200, 100, 50)

    la = Image.merge("LA", (Image.new("L", (40, 30), 200), Image.new("L", (40, 30), 128)))
    assert to_rgb(la).getpixel((5, 5)) == pytest.approx((100, 100, 100), abs=2)

    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 250, 250, 250, 10, 200, 10] + [0] * 759)
    palette.paste(2, (0, 0, 20, 30))
    palette.info["transparency"] = 2
    reopened = open_image(_encode(palette, "PNG"))
    assert to_rgb(reopened).getpixel((5, 5)) == (0, 0, 0)
    assert to_rgb(reopened).getpixel((30, 5)) == (250, 250, 250)


def test_sixteen_bit_ct_values_are_stretched():
    # 12-bit CT stored values (0..4095) as a 16-bit grey PNG, the way scanners and DICOM tools export
    values = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (16, 1))
    image = open_image(_encode(Image.fromarray(values), "PNG"))
    assert image.mode.startswith("I")
    grey = np.asarray(to_rgb(image))[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255
    assert np.all(np.diff(grey[0].astype(int)) >= 0)
    assert grey[0, 32] == pytest.approx(255 * int(values[0, 32]) / 4095, abs=1)


def test_signed_and_float_modes():
    hu = np.tile(np.linspace(-1024, 3071, 50), (10, 1))
    as_int = to_rgb(Image.fromarray(hu.astype(np.int32), mode="I"))
    assert np.asarray(as_int)[0, 0].tolist() == [0, 0, 0] and np.asarray(as_int)[0, -1].tolist() == [255] * 3
    floats = hu.astype(np.float32)
    floats[0, 1] = np.nan
    out = np.asarray(to_rgb(Image.fromarray(floats, mode="F")))
    assert out.dtype == np.uint8 and out[5, -1, 0] == 255 and out[5, 0, 0] == 0
    flat = np.asarray(to_rgb(Image.fromarray(np.full((8, 8), 7.0, dtype=np.float32), mode="F")))
    assert flat.max() == 0  # no range to stretch: no division by zero


def test_premultiplied_and_colour_space_modes():
    la = Image.merge("LA", (Image.new("L", (8, 8), 200), Image.new("L", (8, 8), 255))).convert("La")
    assert to_rgb(la).getpixel((1, 1)) == (200, 200, 200)
    for mode in ("LAB", "HSV", "YCbCr", "RGBX", "RGBa", "PA", "I;16B"):
        assert to_rgb(Image.new("RGB", (8, 8), (90, 90, 90)).convert(mode)).mode == "RGB", mode


def test_unconvertible_mode_is_a_bad_image(monkeypatch):
    image = Image.new("YCbCr", (8, 8))

    def refuse(*args, **kwargs):
        raise ValueError("conversion from YCbCr to RGB not supported")

    monkeypatch.setattr(image, "convert", refuse)
    with pytest.raises(BadImageError, match="unsupported image mode: YCbCr"):
        to_rgb(image)


# ---------------------------------------------------------------------------------------------
# Bad input


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, streamed so its pixels are never held: ~440 kB for 60000^2."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_call = 1000
    idat = [compressor.compress(row * rows_per_call) for _ in range(height // rows_per_call)]
    idat.append(compressor.compress(row * (height % rows_per_call)) + compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(idat))
        + _png_chunk(b"IEND", b"")
    )


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty", b"", "cannot decode image"),
        ("text", b"The image is a CT scan of the chest.", "cannot decode image"),
        ("garbage", np.random.default_rng(0).bytes(5000), "cannot decode image"),
        ("truncated PNG", _encode(Image.effect_noise((256, 256), 60), "PNG")[:3000], "cannot decode image"),
        ("truncated JPEG", _encode(Image.effect_noise((256, 256), 60), "JPEG")[:3000], "cannot decode image"),
        ("PNG header only", _encode(Image.new("L", (64, 64)), "PNG")[:33], "cannot decode image"),
    ],
)
def test_undecodable_bytes_are_bad_images(name, data, reason):
    with pytest.raises(BadImageError, match=reason) as error:
        open_image(data)
    assert 0 < len(str(error.value)) < 200, name


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="no such file"):
        open_image(tmp_path / "missing.png")


def test_image_from_a_path(tmp_path):
    path = tmp_path / "slice.png"
    Image.new("L", (64, 48), 90).save(path)
    assert open_image(path).size == (64, 48)
    assert open_image(str(path)).size == (64, 48)


@pytest.mark.parametrize("size", [(60_000, 60_000), (8_000, 8_000)])
def test_decompression_bomb_is_refused_without_decoding(size):
    # 60000^2 (3.6 G pixels) trips PIL's own bomb check; 8000^2 is under PIL's limit but over
    # MAX_DECODED_PIXELS, so only ctscribe's header check stops it.
    data = _png_bomb(*size)
    assert open_image(_png_bomb(64, 48)).size == (64, 48)  # the generator writes valid PNGs
    before = _max_rss_mb()
    with pytest.raises(BadImageError, match="image too large"):
        prepare_image(data, grid=DEFAULT_FAMILY.grid)
    assert _max_rss_mb() - before < 100  # the header was read, the pixels never allocated


def test_phantom_corrupt_rows_fail_and_others_decode(phantom):
    for truth, data in phantom:
        if truth.corrupt:
            with pytest.raises(BadImageError):
                open_image(data)
        else:
            assert open_image(data).size == (truth.width, truth.height)


# ---------------------------------------------------------------------------------------------
# The green box


def test_find_roi_box_on_phantom(phantom):
    by_id = {truth.id: truth for truth, _ in phantom}
    found_in = set()
    for truth, data in phantom:
        if truth.corrupt:
            continue
        found = find_roi_box(to_rgb(open_image(data)))
        expected = _expected_roi(truth, by_id)
        if expected is None:
            assert found is None, (truth.modality, truth.region, found)
        else:
            assert found is not None, truth
            assert max(abs(a - b) for a, b in zip(found, expected, strict=True)) <= ROI_TOLERANCE
            found_in.add(truth.image_format)
    assert found_in == {"PNG", "JPEG"}
    assert {truth.modality for truth, _ in phantom} == {"CT", "MRI", "X-ray", "histopathology"}


def _grey_with(draw_green) -> Image.Image:
    image = Image.new("RGB", (200, 200), (60, 60, 60))
    draw_green(ImageDraw.Draw(image))
    return image


@pytest.mark.parametrize(
    "draw_green",
    [
        lambda d: [d.point((x, (x * 7) % 200), fill=ROI_GREEN) for x in range(0, 200, 3)],  # stray pixels
        lambda d: d.line((10, 150, 190, 150), fill=ROI_GREEN, width=2),  # a line
        lambda d: d.rectangle((20, 20, 80, 80), fill=ROI_GREEN),  # a filled blob
        lambda d: d.line((20, 20, 20, 120, 120, 120), fill=ROI_GREEN, width=2),  # two sides of a box
        lambda d: d.rectangle((20, 20, 24, 24), outline=ROI_GREEN, width=2),  # too small for a box
    ],
)
def test_find_roi_box_needs_a_green_outline(draw_green):
    assert find_roi_box(_grey_with(draw_green)) is None


def test_find_roi_box_ignores_histology_colours():
    histology = Image.new("RGB", (200, 200), (235, 170, 200))
    ImageDraw.Draw(histology).ellipse((50, 50, 90, 80), fill=(110, 60, 150))
    assert find_roi_box(histology) is None


def _boxed_cases(phantom, count=12):
    """(clean RGB, box-drawn bytes, box) for phantom CT slices with a lesion and no box, PNG and JPEG."""
    cases = []
    for truth, data in phantom:
        if (
            truth.modality == "CT"
            and truth.lesion
            and not (truth.roi_box or truth.duplicate_of or truth.corrupt)
        ):
            clean = to_rgb(open_image(data))
            boxed, box = _with_box(clean, truth.lesion_box)
            cases.append((clean, _encode(boxed, "PNG"), box))
            cases.append((clean, _encode(boxed, "JPEG", quality=80), box))
        if len(cases) >= 2 * count:
            break
    return cases


def test_remove_roi_box_restores_the_tissue(phantom):
    after_all = []
    for clean, data, box in _boxed_cases(phantom):
        boxed = to_rgb(open_image(data))
        found = find_roi_box(boxed)
        assert found is not None and max(abs(a - b) for a, b in zip(found, box, strict=True)) <= 1
        removed = remove_roi_box(boxed, found)
        assert removed.mode == "RGB" and removed.size == boxed.size
        assert find_roi_box(removed) is None
        line = _outline((clean.height, clean.width), box)
        before = np.abs(_pixels(boxed) - _pixels(clean))[line].mean()
        after = np.abs(_pixels(removed) - _pixels(clean))[line].mean()
        assert after < 0.45 * before, (before, after)
        after_all.append(after)
        # nothing but the outline's neighbourhood changed (in grey: CT is repainted as grey)
        far = np.ones((clean.height, clean.width), dtype=bool)
        far[max(0, box[1] - 8) : box[3] + 9, max(0, box[0] - 8) : box[2] + 9] = False
        assert np.array_equal(_pixels(removed.convert("L"))[far], _pixels(boxed.convert("L"))[far])
    # the outline now looks like the tissue around it: within CT noise of the clean slice
    assert np.mean(after_all) < 12


def test_remove_roi_box_keeps_colour_images_in_colour():
    image = Image.new("RGB", (120, 100), (235, 170, 200))
    ImageDraw.Draw(image).rectangle((30, 20, 90, 80), outline=ROI_GREEN, width=2)
    removed = remove_roi_box(image, find_roi_box(image))
    assert find_roi_box(removed) is None
    assert np.abs(_pixels(removed) - np.array([235, 170, 200])).max() <= 1


# ---------------------------------------------------------------------------------------------
# Background crop


def test_crop_background_keeps_the_lesion_and_drops_air(phantom):
    cropped = 0
    for truth, data in phantom:
        if truth.corrupt or truth.modality != "CT":
            continue
        rgb = to_rgb(open_image(data))
        box = crop_background(rgb)
        assert box is not None, truth  # every phantom CT has air around the body, lung window included
        left, upper, right, lower = box
        assert 1 - (right - left) * (lower - upper) / (truth.width * truth.height) >= 0.05
        if truth.lesion_box is not None and truth.duplicate_of is None:
            x0, y0, x1, y1 = truth.lesion_box
            assert left <= x0 and upper <= y0 and right > x1 and lower > y1, (truth.lesion_box, box)
            cropped += 1
    assert cropped > 50


def test_crop_background_leaves_histology_alone(phantom):
    histology = [data for truth, data in phantom if truth.modality == "histopathology"]
    assert histology
    for data in histology:
        assert crop_background(to_rgb(open_image(data))) is None


def test_crop_background_ignores_noise_and_corner_text():
    rng = np.random.default_rng(3)
    air = rng.integers(0, 18, size=(300, 400)).astype(np.uint8)  # noisy air, below the threshold
    air[rng.random(air.shape) < 0.003] = 255  # salt noise
    image = Image.fromarray(air).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 60, 300, 250), fill=(140, 140, 140))
    draw.text((5, 5), "R  L  120 kV  W:400 L:50", fill=(255, 255, 255))
    left, upper, right, lower = crop_background(image)
    assert abs(left - 96) <= 2 and abs(upper - 56) <= 2 and abs(right - 305) <= 2 and abs(lower - 255) <= 2


def test_crop_background_none_when_nothing_to_gain():
    assert crop_background(Image.new("RGB", (100, 100), (0, 0, 0))) is None  # no body
    full = Image.new("RGB", (100, 100), (0, 0, 0))
    ImageDraw.Draw(full).rectangle((1, 1, 98, 98), fill=(120, 120, 120))
    assert crop_background(full) is None  # the body fills the frame


# ---------------------------------------------------------------------------------------------
# Pixel budget and tokens


def test_default_budget_is_a_ct_slice():
    assert budget_size(512, 512, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_FAMILY.grid) == (
        504,
        504,
    )  # 18 x 18 tokens
    assert fit_pixel_budget(
        Image.new("RGB", (512, 512)), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, grid=DEFAULT_FAMILY.grid
    ).size == (
        504,
        504,
    )
    wide = fit_pixel_budget(
        Image.new("RGB", (1024, 512)), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, grid=DEFAULT_FAMILY.grid
    )
    assert wide.width % 28 == 0 and wide.height % 28 == 0
    assert wide.width * wide.height <= DEFAULT_MAX_PIXELS
    assert wide.width > wide.height


@pytest.mark.parametrize(
    ("size", "max_pixels", "min_pixels"),
    [
        ((512, 512), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS),
        ((1024, 512), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS),
        ((300, 217), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS),
        ((61, 97), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS),
        ((2000, 30), DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS),
        ((1024, 1024), 1024 * 1024, 256 * 28 * 28),
        ((100, 90), 28 * 28 * 64, 28 * 28 * 16),
    ],
)
def test_tokens_match_qwen2_vl_processor(size, max_pixels, min_pixels):
    processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    image = Image.new("RGB", size, (90, 90, 90))
    grid = processor(images=image, return_tensors="pt")["image_grid_thw"]
    # the size training measures from a header is the processor's (14-px patches)
    assert budget_size(*size, max_pixels, min_pixels, DEFAULT_FAMILY.grid) == (
        int(grid[0, 2]) * 14,
        int(grid[0, 1]) * 14,
    )
    # the fitted image is taken as it is: the processor finds nothing left to resize
    fitted = fit_pixel_budget(image, max_pixels, min_pixels, grid=DEFAULT_FAMILY.grid)
    fitted_grid = processor(images=fitted, return_tensors="pt")["image_grid_thw"][0].tolist()
    assert fitted_grid == [1, fitted.height // 14, fitted.width // 14]
    assert int(grid.prod()) // 4 == (fitted.width // 28) * (fitted.height // 28)


@pytest.mark.parametrize(("size", "reason"), [((20, 100), "too small"), ((6000, 29), "aspect ratio")])
def test_unusable_shapes_are_bad_images(size, reason):
    with pytest.raises(BadImageError, match=reason):
        prepare_image(_encode(Image.new("L", size, 80), "PNG"), grid=DEFAULT_FAMILY.grid)


def test_options_are_validated():
    with pytest.raises(ValueError, match="roi_box"):
        ImageOptions(roi_box="blur")
    with pytest.raises(ValueError, match="min_pixels"):
        ImageOptions(max_pixels=1000, min_pixels=4000)


# ---------------------------------------------------------------------------------------------
# End to end


def test_prepare_image_on_phantom(phantom):
    by_id = {truth.id: truth for truth, _ in phantom}
    boxed = 0
    for truth, data in phantom:
        if truth.corrupt:
            with pytest.raises(BadImageError):
                prepare_image(data, grid=DEFAULT_FAMILY.grid)
            continue
        prepared = prepare_image(data, grid=DEFAULT_FAMILY.grid)
        assert isinstance(prepared, PreparedImage)
        image = prepared.image
        assert image.mode == "RGB" and image.width % 28 == 0 and image.height % 28 == 0
        assert prepared.image_tokens == (image.width // 28) * (image.height // 28) <= 324
        expected = _expected_roi(truth, by_id)
        assert (prepared.roi_box is None) == (expected is None), truth
        if expected is not None:
            boxed += 1
            assert find_roi_box(prepared.full_frame) is None  # painted out before the model sees it
        assert prepared.full_frame.size == (truth.width, truth.height)
        if truth.modality == "CT":
            assert prepared.crop_box is not None
    assert boxed > 10


def test_prepare_image_can_keep_the_box(phantom):
    data = next(d for t, d in phantom if t.roi_box and not (t.corrupt or t.duplicate_of))
    kept = prepare_image(data, ImageOptions(roi_box="keep", crop_background=False), grid=DEFAULT_FAMILY.grid)
    assert kept.roi_box is not None and find_roi_box(kept.full_frame) == kept.roi_box
    assert (
        kept.crop_box is None
        and kept.image.size
        == fit_pixel_budget(
            kept.full_frame, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, grid=DEFAULT_FAMILY.grid
        ).size
    )


def test_prepare_image_takes_a_dicom_like_image():
    hu = np.full((512, 512), -1000, dtype=np.int32)  # air
    yy, xx = np.mgrid[:512, :512]
    hu[(xx - 256) ** 2 / 200**2 + (yy - 256) ** 2 / 160**2 <= 1] = 40  # soft tissue body
    prepared = prepare_image(Image.fromarray(hu, mode="I"), grid=DEFAULT_FAMILY.grid)
    assert prepared.crop_box is not None and prepared.image_tokens <= 324
    assert prepared.image.width > prepared.image.height  # cropped to the wide body


# ---------------------------------------------------------------------------------------------
# The box in the model image's frame


def test_roi_in_model_frame_by_hand():
    # No crop: the box on the whole image's grid (the resize changes no fraction of a side).
    assert roi_in_model_frame((10, 5, 29, 24), None, (100, 50)) == GridBox(100, 100, 300, 500)
    # A crop shifts the box and the crop's sides are the grid's: (30, 40)-(59, 79) in the crop
    # (20, 20, 120, 100) is (10, 20)-(39, 59) of a 100 x 80 frame.
    assert roi_in_model_frame((30, 40, 59, 79), (20, 20, 120, 100), (200, 100)) == GridBox(100, 250, 400, 750)
    # A crop that cuts the box keeps the part inside it ...
    assert roi_in_model_frame((10, 10, 49, 49), (20, 0, 100, 100), (100, 100)) == GridBox(0, 100, 375, 500)
    # ... and one that leaves nothing of it leaves no box.
    assert roi_in_model_frame((0, 0, 9, 9), (20, 0, 100, 100), (100, 100)) is None


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, 168 * 168])
def test_the_box_lands_where_the_kept_box_shows_in_the_model_image(phantom, max_pixels):
    """Independent of the mapping's arithmetic: with the box kept in the image, the green outline found
    in the final (cropped, resized) image is where the mapped box says it is."""
    checked = 0
    for truth, data in phantom:
        if truth.roi_box is None or truth.corrupt or truth.duplicate_of:
            continue
        prepared = prepare_image(
            data, ImageOptions(max_pixels=max_pixels, roi_box="keep"), grid=DEFAULT_FAMILY.grid
        )
        seen = find_roi_box(prepared.image)
        assert seen is not None, truth.id
        assert prepared.crop_box is not None and prepared.image.size != (truth.width, truth.height)
        expected = to_grid(seen, *prepared.image.size)
        error = max(abs(a - b) for a, b in zip(prepared.roi_grid.as_list(), expected.as_list(), strict=True))
        assert error <= 8, (truth.id, prepared.roi_grid, expected)  # 0.8% of a side (measured: 5 at most)
        checked += 1
    assert checked >= 40
