"""Qwen2-VL (``model_type`` ``qwen2_vl``): the seed's family and ctscribe's default.

- Model: ``Qwen2VLForConditionalGeneration`` (what ``AutoModelForImageTextToText`` maps this config
  to); its inner ``Qwen2VLModel`` (``model.model``) holds the vision tower ``visual``, whose
  ``merger`` is the projector into the language model, and ``language_model``, whose linear layers
  LoRA adapts.
- Positions: M-RoPE, computed per unpacked sample by ``Qwen2VLModel.get_rope_index``.
- Image grid: 14-px ViT patches merged 2 x 2, so one image token per 28 x 28 pixels, at the size
  transformers' own ``smart_resize`` picks.
- Chat template: Qwen2-VL-Instruct's ChatML, written out here with the answer spans (checked
  character for character against the tokenizer's own template by
  ``tests/conversation/test_template.py``).
- Grounding: ``<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x0,y0),(x1,y1)<|box_end|>``,
  integer corners on a 0-1000 grid of the image the model sees, x before y. The four markers are
  special tokens of the Qwen2 tokenizer (read from it, never written as ids).
- LLaMA-Factory's template for it is ``qwen2_vl``.
"""

from __future__ import annotations

from ctscribe.models.family import ChatTemplate, Family, GroundingFormat, ImageGrid

PATCH = 14  # ViT patch side in pixels (vision_config.patch_size)
MERGE = 2  # patches merged per token side (vision_config.spatial_merge_size)
MAX_ASPECT_RATIO = 200  # smart_resize refuses more extreme shapes

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Qwen's padding token (``pad_token`` of the Qwen2-VL tokenizers); padding is masked out of attention
# and loss, so its id matters only in being one the embedding table has.
PAD = "<|endoftext|>"
VISION_PROMPT = f"<|vision_start|>{IMAGE_PAD}<|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."  # what the template adds when a conversation has none


def model_class() -> type:
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration


def core(model):
    """The ``Qwen2VLModel`` inside a (PEFT-wrapped) ``Qwen2VLForConditionalGeneration``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def vision_tower(model):
    """The vision tower (projector included) of a (PEFT-wrapped) model."""
    return core(model).visual


def lora_pattern(names: tuple[str, ...]) -> str:
    """A PEFT regex over module names: these linear layers of the language model, never the tower."""
    return rf".*language_model.*\.({'|'.join(names)})$"


def rope_index(core, input_ids, image_grid_thw, **extra):
    """(3, 1, length) M-RoPE positions of one unpacked sample, exactly as ordinary training computes them."""
    positions, _ = core.get_rope_index(input_ids=input_ids, image_grid_thw=image_grid_thw, **extra)
    return positions


def merged_tokens(tower, grid_thw):
    """Image tokens per image: the tower's patches over the merge window."""
    return grid_thw.prod(-1) // tower.spatial_merge_size**2


def resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``(height, width)`` Qwen2-VL's processor resizes to, from transformers' own ``smart_resize``."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=PATCH * MERGE, min_pixels=min_pixels, max_pixels=max_pixels)


def render(messages: list[dict], image_placeholder: str) -> tuple[str, list[tuple[int, int]]]:
    """The chat template's text for a record's messages, and the character spans of the answers.

    A span covers an assistant answer and its ``<|im_end|>`` (what the model must learn to write,
    including where to stop), in every turn of a multi-turn conversation. Each ``image_placeholder``
    becomes one ``<|image_pad|>`` (expanded later).
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0

    def add(text: str, train: bool = False) -> None:
        nonlocal length
        if train:
            spans.append((length, length + len(text)))
        parts.append(text)
        length += len(text)

    if not messages or messages[0]["role"] != "system":
        add(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {role!r} in a conversation")
        add(f"<|im_start|>{role}\n")
        if role == "assistant":
            add(f"{content}<|im_end|>", train=True)
            add("\n")
        else:
            add(f"{content.replace(image_placeholder, VISION_PROMPT)}<|im_end|>\n")
    return "".join(parts), spans


FAMILY = Family(
    model_type="qwen2_vl",
    name="Qwen2-VL",
    example_checkpoint="Qwen/Qwen2-VL-2B-Instruct",
    llamafactory_template="qwen2_vl",
    model_class=model_class,
    core=core,
    vision_tower=vision_tower,
    tower_name="visual",
    projector_name="merger",
    lora_pattern=lora_pattern,
    rope_index=rope_index,
    merged_tokens=merged_tokens,
    grid=ImageGrid(patch=PATCH, merge=MERGE, resize=resize, max_aspect_ratio=MAX_ASPECT_RATIO),
    template=ChatTemplate(
        image_pad=IMAGE_PAD, video_pad=VIDEO_PAD, pad=PAD, default_system=DEFAULT_SYSTEM, render=render
    ),
    grounding=GroundingFormat(
        ref_start="<|object_ref_start|>",
        ref_end="<|object_ref_end|>",
        box_start="<|box_start|>",
        box_end="<|box_end|>",
        grid=1000,
    ),
)
