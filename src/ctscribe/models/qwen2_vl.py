"""Qwen2-VL (``model_type`` ``qwen2_vl``): the seed's family and ctscribe's default.

- Model: ``Qwen2VLForConditionalGeneration`` (what ``AutoModelForImageTextToText`` maps this config
  to); its inner ``Qwen2VLModel`` (``model.model``) holds the vision tower ``visual``, whose
  ``merger`` is the projector into the language model, and ``language_model``, whose linear layers
  LoRA adapts.
- Positions: M-RoPE, computed per unpacked sample by ``Qwen2VLModel.get_rope_index``.
- Image grid: 14-px ViT patches merged 2 x 2, so one image token per 28 x 28 pixels, at the size
  transformers' own ``smart_resize`` picks.
- Chat template: Qwen2-VL-Instruct's ChatML with the default system turn "You are a helpful
  assistant.", written out with the answer spans (checked character for character against the
  tokenizer's own template by ``tests/conversation/test_template.py``).
- Grounding: ``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>``,
  integer corners on a 0-1000 grid of the image the model sees, x before y. The four markers are
  special tokens of the Qwen2 tokenizer (read from it, never written as ids).
- LLaMA-Factory's template for it is ``qwen2_vl``.
"""

from __future__ import annotations

from ctscribe.models import qwen

FAMILY = qwen.family(
    model_type="qwen2_vl",
    name="Qwen2-VL",
    example_checkpoint="Qwen/Qwen2-VL-2B-Instruct",
    llamafactory_template="qwen2_vl",
    model_class="Qwen2VLForConditionalGeneration",
    patch=14,
    default_system="You are a helpful assistant.",
)
