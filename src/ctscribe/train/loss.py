"""The training loss with the language-model head applied only where a label is.

The default family's head maps every position to 151,936 logits, but the loss is taken on the answer tokens
only: with a 324-token image and a ~90-token caption, about four positions in five are projected and
then thrown away. transformers' ``logits_to_keep`` accepts a boolean (batch, sequence) mask, so the
model's own forward (hence DDP, PEFT and gradient checkpointing as usual) projects only the positions
that predict a labelled token; the cross-entropy and its reduction match the model's own loss
(``ForCausalLMLoss``), so the loss and gradients are the same up to rounding.

Where Liger is active (installed, on a GPU) its fused linear cross-entropy replaces the model's loss
and never builds the logits at all, which is better still; :func:`liger_active` says when.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ctscribe.recipe import Recipe
from ctscribe.train.samples import IGNORE_INDEX


def liger_active(recipe: Recipe) -> bool:
    """Liger's kernels are Triton kernels: they need the package and a CUDA device (``auto``)."""
    if recipe.use_liger_kernel == "auto":
        return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    return bool(recipe.use_liger_kernel)


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, sequence) mask of the positions whose next token is labelled."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def labelled_only_loss(
    model: torch.nn.Module, inputs: dict, num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, object]:
    """The causal-LM loss of ``inputs`` with logits built at labelled positions only.

    Reduced as transformers reduces it: a sum over the batch's labelled tokens divided by
    ``num_items_in_batch`` (the Trainer's count over the whole accumulated batch) when given, else
    the mean over this batch's labelled tokens.
    """
    labels = inputs["labels"]
    keep = predicting_positions(labels)
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
    targets = labels[:, 1:][keep[:, :-1]]
    logits = outputs.logits.float()  # (number of kept positions, vocabulary)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets), outputs
    total = F.cross_entropy(logits, targets, reduction="sum")
    return total / torch.as_tensor(num_items_in_batch, device=total.device), outputs
