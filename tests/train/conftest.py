"""Shared pieces of the training tests: a few image records, the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLForConditionalGeneration

from ctscribe.ct.images import ImageOptions
from ctscribe.train.samples import SFTDataset

# Image sizes and answers that differ, so samples differ in length and packing has borders to keep.
SAMPLES = [
    ("a", (112, 112), "Short."),
    ("b", (224, 112), "A longer answer about the chest and its lungs."),
    ("c", (112, 168), "CT of the head, with a bleed on the left."),
]


@pytest.fixture(scope="session")
def image_records(tmp_path_factory):
    """(folder, records): three one-image records with noise images of different sizes."""
    root = tmp_path_factory.mktemp("records")
    (root / "images").mkdir()
    records = []
    for seed, (name, size, answer) in enumerate(SAMPLES):
        noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "images" / f"{name}.png")
        records.append(
            {
                "id": name,
                "messages": [
                    {"role": "user", "content": "<image>Describe the image."},
                    {"role": "assistant", "content": answer},
                ],
                "images": [f"images/{name}.png"],
            }
        )
    return root, records


@pytest.fixture
def make_dataset(processor, image_records, family):
    """``make_dataset(max_pixels=..., cutoff_len=...)``: an SFTDataset of ``image_records``."""

    def make(max_pixels: int = 262144, cutoff_len: int = 512) -> SFTDataset:
        root, records = image_records
        options = ImageOptions(max_pixels=max_pixels, roi_box="keep", crop_background=False)
        return SFTDataset(
            records, root, processor.tokenizer, processor.image_processor, options, cutoff_len, family
        )

    return make


@pytest.fixture
def family_setup(family_model_dir, image_records):
    """``family_setup(model_type)``: (model, processor, dataset of ``image_records``) for that family's
    tiny fixture, the model in fp32 as training loads it."""
    from transformers import AutoProcessor

    from ctscribe.models import FAMILIES

    def setup(model_type: str):
        folder, family = family_model_dir(model_type), FAMILIES[model_type]
        processor = AutoProcessor.from_pretrained(folder)
        model = family.model_class().from_pretrained(folder, dtype=torch.float32).eval()
        model.config.use_cache = False
        root, records = image_records
        options = ImageOptions(max_pixels=262144, roi_box="keep", crop_background=False)
        tokenizer, images = processor.tokenizer, processor.image_processor
        return model, processor, SFTDataset(records, root, tokenizer, images, options, 512, family)

    return setup


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """The tiny Qwen2-VL in fp32 with SDPA, as training loads it (no KV cache)."""
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


@pytest.fixture
def labelled_count():
    """The Trainer's ``num_items_in_batch`` for one batch: labelled tokens after the shift."""
    return lambda batch: int((batch["labels"][:, 1:] != -100).sum())
