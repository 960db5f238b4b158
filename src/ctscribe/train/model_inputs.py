"""A collated batch as the model's forward arguments: cached vision features and packed rows.

The collator cannot do this part: it needs the model (its embedding table for cached features, its
family's position rule, ``Family.rope_index``, for positions). Everything else is passed to the
model's own forward unchanged, so DDP, PEFT, gradient checkpointing and Liger see an ordinary call.
The image and video token ids come from the model's config (``image_token_id``, ``video_token_id``).
"""

from __future__ import annotations

import itertools

import torch

from ctscribe.models.family import Family
from ctscribe.train.packing import count_images
from ctscribe.train.samples import mm_token_types, model_takes_token_types


def rope_positions(
    family: Family,
    core: torch.nn.Module,
    input_ids: torch.Tensor,
    text_positions: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
) -> torch.Tensor:
    """(4, rows, length) position ids: text positions, then M-RoPE positions computed per sample.

    A sample starts wherever its text position is 0. ``core`` is the model's inner model
    (``family.core``), with which ``family.rope_index`` computes one unpacked sample's positions
    exactly as in ordinary training.
    """
    rows, length = input_ids.shape
    positions = torch.zeros(3, rows, length, dtype=torch.long, device=input_ids.device)
    used_images = 0
    image_pad, video_pad = core.config.image_token_id, core.config.video_token_id
    for row in range(rows):
        starts = [*(text_positions[row] == 0).nonzero().flatten().tolist(), length]
        for start, end in itertools.pairwise(starts):
            ids = input_ids[row : row + 1, start:end]
            images = count_images(ids, image_pad)
            grid = image_grid_thw[used_images : used_images + images] if images else None
            used_images += images
            extra = {}
            if model_takes_token_types(family.model_class()):
                extra["mm_token_type_ids"] = mm_token_types(ids, image_pad, video_pad)
            sample_positions = family.rope_index(core, ids, grid, **extra)
            positions[:, row, start:end] = sample_positions[:, 0]
    return torch.cat([text_positions[None].to(positions), positions])


def with_image_features(
    core: torch.nn.Module, input_ids: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """Token embeddings with the image-pad positions replaced by (cached) vision features.

    What the inner model's forward does with the tower's output, done here because the features do
    not come from the tower.
    """
    embeds = core.get_input_embeddings()(input_ids)
    pads = input_ids == core.config.image_token_id
    if int(pads.sum()) != features.shape[0]:
        raise ValueError(f"{int(pads.sum())} image-pad tokens but {features.shape[0]} cached feature rows")
    return embeds.masked_scatter(pads.unsqueeze(-1), features.to(embeds.device, embeds.dtype))


def model_inputs(family: Family, core: torch.nn.Module, batch: dict) -> dict:
    """Forward arguments for ``batch``: unchanged unless it is packed or carries cached features.

    Packed rows (``text_position_ids``, no attention mask) and cached features (``image_features``,
    which replace ``input_ids`` by ``inputs_embeds``) both need explicit (4, rows, length) positions,
    since the model can only compute M-RoPE positions itself from unpacked ``input_ids``.
    """
    batch = dict(batch)
    features = batch.pop("image_features", None)
    text_positions = batch.pop("text_position_ids", None)
    if features is None and text_positions is None:
        return batch
    input_ids = batch["input_ids"]
    if text_positions is None:  # unpacked rows: one sample each, its padding masked by attention_mask
        rows, length = input_ids.shape
        text_positions = torch.arange(length, device=input_ids.device).expand(rows, length)
    batch["position_ids"] = rope_positions(
        family, core, input_ids, text_positions, batch.get("image_grid_thw")
    )
    batch["use_cache"] = False  # with a KV cache transformers would not read sample borders from positions
    if features is not None:
        batch["inputs_embeds"] = with_image_features(core, batch.pop("input_ids"), features)
        batch.pop("mm_token_type_ids", None)
    return batch
