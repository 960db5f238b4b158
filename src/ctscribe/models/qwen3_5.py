"""Qwen3.5 (``model_type`` ``qwen3_5``, dense), e.g. Qwen3.5-2B: natively multimodal.

How it differs from Qwen2-VL (read from transformers' ``modeling_qwen3_5`` and the checkpoint's files):

- Model: ``Qwen3_5ForConditionalGeneration``. Its language model mixes Gated DeltaNet linear-attention
  layers (``linear_attn``: ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``, ``out_proj``,
  all adapted by ``lora_target: all``) with gated full attention. The linear layers carry a recurrent
  state and a causal convolution along the row, which transformers' torch path does not reset at a
  packed sample's start: packing would leak one sample into the next, so it is switched off.
- Image grid: 16-px patches merged 2 x 2, one image token per 32 x 32 pixels (as Qwen3-VL, no DeepStack).
- Chat template: ChatML without a default system turn; it thinks unless told not to, so the
  generation prompt and each answer after the last user turn start with an empty think block
  ``<think>\\n\\n</think>\\n\\n`` (prompt, not trained). LLaMA-Factory's template is ``qwen3_5_nothink``.
- Grounding: corners on a 0-1000 grid with the same marker tokens.
"""

from __future__ import annotations

from ctscribe.models import qwen

FAMILY = qwen.family(
    model_type="qwen3_5",
    name="Qwen3.5",
    example_checkpoint="Qwen/Qwen3.5-2B",
    llamafactory_template="qwen3_5_nothink",
    model_class="Qwen3_5ForConditionalGeneration",
    patch=16,
    default_system=None,
    answer_prefix="<think>\n\n</think>\n\n",
    language_linear=(*qwen.DECODER_LINEAR, "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"),
    limits={
        "packing": "its Gated DeltaNet layers carry state along a row, so packed samples would leak "
        "into each other",
    },
)
