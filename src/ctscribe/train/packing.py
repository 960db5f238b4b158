"""Packing several samples into one row, with each sample's own positions and attention.

A right-padded batch spends attention and MLP FLOPs on padding; packing a micro-batch's samples end
to end into rows of at most ``cutoff_len`` tokens does not. The samples per step stay the same (a
micro-batch is packed, not the data set), so the loss is the same sum over the same labelled tokens.

Two things keep packed samples apart, and both come from transformers rather than from hand-written
masks: (1) position ids of shape (4, rows, length), text positions restarting at 0 for each sample on
top of the M-RoPE (temporal, height, width) positions computed per sample by the model family's own
position rule (``Family.rope_index``); (2) no 2-D attention mask, so transformers' mask builder reads
the sample borders from the restarting text positions and builds a block-diagonal causal mask for
SDPA and eager attention (flash-attention 2 gets the same borders as variable-length sequences).
"""

from __future__ import annotations

import torch


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row, in order, a new row whenever the next sample would overflow.

    Order is kept (next fit, not best fit) so the images of a packed batch stay in sample order,
    which is the order the model scatters their features into the image-pad positions.
    """
    rows: list[list[int]] = [[]]
    used = 0
    for index, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"a sample of {length} tokens cannot be packed into rows of {capacity}")
        if rows[-1] and used + length > capacity:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def count_images(input_ids: torch.Tensor, image_pad_id: int) -> int:
    """Images in a token sequence: each is one run of image-pad tokens."""
    pads = input_ids == image_pad_id
    starts = pads.clone()
    starts[..., 1:] &= ~pads[..., :-1]
    return int(starts.sum())
