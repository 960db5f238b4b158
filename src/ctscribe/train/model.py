"""Build the model a recipe trains: base weights, frozen parts, and LoRA / QLoRA / full fine-tuning."""

from __future__ import annotations

import importlib.util
import warnings

import torch

from ctscribe.models.family import Family
from ctscribe.recipe import Recipe, RecipeError


def use_bf16(recipe: Recipe) -> bool:
    """bf16 where the hardware has it (``auto``); fp32 on CPU, where bf16 is slow and inexact."""
    if recipe.bf16 == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if recipe.bf16 and not torch.cuda.is_available():
        raise RecipeError("bf16: true needs a GPU with bf16 support; use bf16: auto or false on CPU")
    return bool(recipe.bf16)


def attention_implementation(recipe: Recipe) -> str:
    """flash-attention 2 when installed on a GPU, else PyTorch's SDPA (``auto``)."""
    if recipe.attn_implementation != "auto":
        return recipe.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def lora_target_modules(recipe: Recipe, family: Family) -> str:
    """A PEFT regex over module names: the language model's linear layers only, never the vision tower."""
    names = (
        family.language_linear
        if recipe.lora_target == "all"
        else tuple(n.strip() for n in recipe.lora_target.split(","))
    )
    return family.lora_pattern(names)


def build_model(recipe: Recipe, family: Family):
    """Load the base model, a checkpoint of ``family``, and make exactly the recipe's parameters
    trainable."""
    quantization = None
    if recipe.finetuning_type == "qlora":
        if not torch.cuda.is_available():
            raise RecipeError("finetuning_type: qlora needs a CUDA GPU (4-bit bitsandbytes); use lora on CPU")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RecipeError("finetuning_type: qlora needs bitsandbytes: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = family.model_class().from_pretrained(
        recipe.model_name_or_path,
        dtype=torch.bfloat16 if use_bf16(recipe) else torch.float32,
        attn_implementation=attention_implementation(recipe),
        quantization_config=quantization,
    )
    model.config.use_cache = False  # the KV cache only costs memory in training

    for name, parameter in family.vision_tower(model).named_parameters():
        projector = name.startswith(tuple(f"{prefix}." for prefix in family.projector_names))
        frozen = recipe.freeze_multi_modal_projector if projector else recipe.freeze_vision_tower
        parameter.requires_grad = not frozen

    if recipe.finetuning_type == "full":
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantization is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.gradient_checkpointing
        )
    # PEFT freezes everything but the adapter; parts the recipe also trains (the vision tower, which
    # includes the projector, or the projector alone) are trained fully and saved with the adapter.
    modules_to_save = None
    if not recipe.freeze_vision_tower:
        modules_to_save = [family.tower_name]
    elif not recipe.freeze_multi_modal_projector:
        modules_to_save = list(family.projector_names)
    config = LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=lora_target_modules(recipe, family),
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft 0.21.2 (the newest) reads the model's deprecated ``is_gradient_checkpointing`` to decide
        # whether to prepare for checkpointing; transformers 5.24 warns on that read, on every LoRA run.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(model, config)
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed frozen embeddings need grad-carrying inputs
    return model
