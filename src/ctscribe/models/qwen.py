"""What every Qwen vision-language family shares, so that each family module states only how it differs.

All four (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) wrap an inner model (``model.model``) that holds the
vision tower ``visual`` and the ``language_model``; compute M-RoPE positions with the inner model's
``get_rope_index``; merge ``spatial_merge_size`` x ``spatial_merge_size`` patches into one image token;
resize with transformers' ``smart_resize`` to multiples of patch x merge; chat in ChatML with the same
vision markers; and have the same grounding marker tokens in their vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from ctscribe.models.family import ChatTemplate, Family, GroundingFormat, ImageGrid

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Qwen's padding token (``pad_token`` of every Qwen tokenizer); padding is masked out of attention and
# loss, so its id matters only in being one the embedding table has.
PAD = "<|endoftext|>"
VISION_PROMPT = f"<|vision_start|>{IMAGE_PAD}<|vision_end|>"
MAX_ASPECT_RATIO = 200  # smart_resize refuses more extreme shapes
# The attention and MLP projections of a Qwen decoder layer.
DECODER_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Box markup on a 0-1000 grid of the image the model sees, x before y; the markers are special tokens.
GRID_GROUNDING = GroundingFormat(
    ref_start="<|object_ref_start|>",
    ref_end="<|object_ref_end|>",
    box_start="<|box_start|>",
    box_end="<|box_end|>",
    grid=1000,
)
# The same markup with corners in pixels of the image the model sees (Qwen2.5-VL's convention).
ABSOLUTE_GROUNDING = dataclasses.replace(GRID_GROUNDING, absolute=True)


def core(model):
    """The inner model (``model.model``) of a (PEFT-wrapped) ``*ForConditionalGeneration``."""
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


def image_grid(patch: int, merge: int) -> ImageGrid:
    """``patch``-px patches merged ``merge`` x ``merge``, at the size transformers' ``smart_resize`` picks
    (the image processor every Qwen family uses)."""

    def resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        return smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)

    return ImageGrid(patch=patch, merge=merge, resize=resize, max_aspect_ratio=MAX_ASPECT_RATIO)


def chatml(default_system: str | None, answer_prefix: str = "") -> ChatTemplate:
    """A Qwen ChatML template written out with the answer spans.

    ``default_system``: the system turn the template adds when a conversation has none (None: it adds
    none). ``answer_prefix``: what the template writes before each assistant answer after the last user
    turn, and after the generation prompt (Qwen3.5's empty think block); it is prompt, not answer.

    A span covers an assistant answer and its ``<|im_end|>`` (what the model must learn to write,
    including where to stop), in every turn of a multi-turn conversation. Each ``image_placeholder``
    becomes one ``<|image_pad|>`` (expanded later).
    """

    def render(messages: list[dict], image_placeholder: str) -> tuple[str, list[tuple[int, int]]]:
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        length = 0

        def add(text: str, train: bool = False) -> None:
            nonlocal length
            if train:
                spans.append((length, length + len(text)))
            parts.append(text)
            length += len(text)

        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        if default_system is not None and (not messages or messages[0]["role"] != "system"):
            add(f"<|im_start|>system\n{default_system}<|im_end|>\n")
        for index, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown role {role!r} in a conversation")
            add(f"<|im_start|>{role}\n")
            if role == "assistant":
                if index > last_user:
                    add(answer_prefix)
                add(f"{content}<|im_end|>", train=True)
                add("\n")
            else:
                add(f"{content.replace(image_placeholder, VISION_PROMPT)}<|im_end|>\n")
        return "".join(parts), spans

    return ChatTemplate(
        image_pad=IMAGE_PAD,
        video_pad=VIDEO_PAD,
        pad=PAD,
        default_system=default_system,
        render=render,
    )


def model_class_named(name: str) -> Callable[[], type]:
    """The transformers class ``name``, imported when asked for (families stay torch-free at import)."""

    def model_class() -> type:
        import transformers

        return getattr(transformers, name)

    return model_class


def family(
    *,
    model_type: str,
    name: str,
    example_checkpoint: str,
    llamafactory_template: str,
    model_class: str,
    patch: int,
    default_system: str | None,
    answer_prefix: str = "",
    projector_names: tuple[str, ...] = ("merger",),
    language_linear: tuple[str, ...] = DECODER_LINEAR,
    grounding: GroundingFormat = GRID_GROUNDING,
    limits: Mapping[str, str] | None = None,
) -> Family:
    """A Qwen family: what every Qwen vision-language family shares, with what this one says differs."""
    return Family(
        model_type=model_type,
        name=name,
        example_checkpoint=example_checkpoint,
        llamafactory_template=llamafactory_template,
        model_class=model_class_named(model_class),
        core=core,
        vision_tower=vision_tower,
        tower_name="visual",
        projector_names=projector_names,
        lora_pattern=lora_pattern,
        language_linear=language_linear,
        rope_index=rope_index,
        merged_tokens=merged_tokens,
        grid=image_grid(patch=patch, merge=2),
        template=chatml(default_system, answer_prefix),
        grounding=grounding,
        limits=dict(limits or {}),
    )
