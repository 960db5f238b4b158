"""Qwen3-VL (``model_type`` ``qwen3_vl``), e.g. Qwen3-VL-2B-Instruct.

How it differs from Qwen2-VL (read from transformers' ``modeling_qwen3_vl`` and the checkpoint's files):

- Model: ``Qwen3VLForConditionalGeneration``; the tower's projector is ``merger`` plus
  ``deepstack_merger_list``, which projects features of three intermediate vision blocks (DeepStack)
  that the language model adds to its first layers' hidden states.
- Image grid: 16-px patches merged 2 x 2, one image token per 32 x 32 pixels (its processor config
  gives ``size`` {shortest_edge, longest_edge} rather than min/max_pixels; the budget sets both).
- Chat template: ChatML without a default system turn (``tests/conversation/test_template.py`` checks
  it against the tokenizer's own). LLaMA-Factory's template is ``qwen3_vl_nothink``: the plain
  ``qwen3_vl`` one is a reasoning template that puts an empty think block before every trained answer.
- Grounding: corners on a 0-1000 grid, as Qwen2-VL's, written with the same marker tokens.
- The vision-feature cache stores the projector's output only, not the DeepStack features, so it is
  switched off for this family.
"""

from __future__ import annotations

from ctscribe.models import qwen

FAMILY = qwen.family(
    model_type="qwen3_vl",
    name="Qwen3-VL",
    example_checkpoint="Qwen/Qwen3-VL-2B-Instruct",
    llamafactory_template="qwen3_vl_nothink",
    model_class="Qwen3VLForConditionalGeneration",
    patch=16,
    default_system=None,
    projector_names=("merger", "deepstack_merger_list"),
    limits={
        "cache_vision_features": "the cache holds the projector's output, not the DeepStack features "
        "its language model also takes from three vision blocks",
    },
)
