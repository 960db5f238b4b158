"""Qwen2.5-VL (``model_type`` ``qwen2_5_vl``), e.g. Qwen2.5-VL-3B-Instruct.

How it differs from Qwen2-VL (read from transformers' ``modeling_qwen2_5_vl`` and the checkpoint's files):

- Model: ``Qwen2_5_VLForConditionalGeneration``; its vision tower attends within windows in most blocks
  (full attention in a few), which changes nothing ctscribe does with it: the tower, its ``merger``
  projector and the language model sit where Qwen2-VL's do.
- Image grid, chat template (Qwen2-VL-Instruct's, with its default system turn) and LLaMA-Factory's
  template (``qwen2_vl``) are Qwen2-VL's.
- Grounding: the same marker tokens, but the corners are absolute pixels of the image the model sees
  (after the processor's resize), not 0-1000. ctscribe keeps every box on the 0-1000 grid at rest
  (prepared records, predictions, the API) and converts at the model's edge
  (:func:`ctscribe.conversation.boxes.to_model`, :func:`ctscribe.conversation.boxes.from_model`).
  Qwen2.5-VL's own cookbook prompts for JSON (``bbox_2d``); ctscribe trains the marker form.
"""

from __future__ import annotations

from ctscribe.models import qwen

FAMILY = qwen.family(
    model_type="qwen2_5_vl",
    name="Qwen2.5-VL",
    example_checkpoint="Qwen/Qwen2.5-VL-3B-Instruct",
    llamafactory_template="qwen2_vl",
    model_class="Qwen2_5_VLForConditionalGeneration",
    patch=14,
    default_system="You are a helpful assistant.",
    grounding=qwen.ABSOLUTE_GROUNDING,
)
