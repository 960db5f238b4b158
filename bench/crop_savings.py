"""Image tokens saved by the background crop of the one image path, on phantom and real CT.

Air around the body costs image tokens without telling the model anything. This measures the mean
image tokens per image at the recipe's pixel budget with ``crop_background`` off and on, everything
else equal (``ctscribe.ct.images.prepare_image``), on two sets:

- phantom CT: the clean CT rows of the phantom MedTrinity set (``ctscribe.fixtures.phantom``), at
  their own sizes (256-320 pixels) and resized to 512x512 as most MedTrinity CT images are;
- real CT: the CT slices shipped in pydicom's wheel (src/ctscribe/fixtures/dicom_samples.py), windowed
  as ``ctscribe predict`` windows them (``auto``).

Usage: python bench/crop_savings.py [--rows 300] [--max-pixels N] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from pathlib import Path

from PIL import Image

from ctscribe.ct.images import ImageOptions, prepare_image
from ctscribe.ct.inputs import iter_inputs
from ctscribe.fixtures.dicom_samples import pydicom_ct_slices
from ctscribe.fixtures.learning import clean_ct_rows
from ctscribe.model_settings import DEFAULT_MAX_PIXELS


def mean_tokens(images: list[Image.Image], max_pixels: int) -> dict:
    """Mean image tokens without and with the background crop, and the share saved."""
    off = [
        prepare_image(i, ImageOptions(max_pixels=max_pixels, crop_background=False)).image_tokens
        for i in images
    ]
    on = [
        prepare_image(i, ImageOptions(max_pixels=max_pixels, crop_background=True)).image_tokens
        for i in images
    ]
    without, with_crop = statistics.mean(off), statistics.mean(on)
    return {
        "images": len(images),
        "tokens_without_crop": round(without, 1),
        "tokens_with_crop": round(with_crop, 1),
        "saved": round(1 - with_crop / without, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=300, help="phantom rows drawn (about 80% are clean CT)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="the recipe's budget")
    parser.add_argument("--json", type=Path, default=Path("bench/results/crop_savings.json"))
    args = parser.parse_args()

    phantom = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in clean_ct_rows(args.rows, seed=5)]
    real = {Path(item.source).name: item.image for item in iter_inputs(list(pydicom_ct_slices().values()))}
    sets = {
        "phantom CT, own size": phantom,
        "phantom CT, 512x512": [image.resize((512, 512)) for image in phantom],
        "pydicom real CT": list(real.values()),
    }
    results = {name: mean_tokens(images, args.max_pixels) for name, images in sets.items()}
    for name, image in real.items():
        results[f"  {name} ({image.width}x{image.height})"] = mean_tokens([image], args.max_pixels)

    print(f"{'set':<36} {'images':>6} {'tokens, no crop':>16} {'tokens, crop':>13} {'saved':>7}")
    for name, row in results.items():
        print(
            f"{name:<36} {row['images']:>6} {row['tokens_without_crop']:>16.1f} "
            f"{row['tokens_with_crop']:>13.1f} {row['saved']:>7.1%}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"max_pixels": args.max_pixels, **results}, indent=2))


if __name__ == "__main__":
    main()
