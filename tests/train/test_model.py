import pytest
import torch

from ctscribe.recipe import Recipe, RecipeError
from ctscribe.train.model import attention_implementation, build_model


def _trainable(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_lora_adapts_only_language_model_linear_layers(tiny_model_dir, family):
    model = build_model(Recipe(model_name_or_path=str(tiny_model_dir), bf16=False), family)
    trainable = _trainable(model)
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("visual" in name for name in trainable)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model.peft_config["default"].r == 8 and model.peft_config["default"].lora_alpha == 16


def test_lora_target_list_and_unfrozen_projector(tiny_model_dir, family):
    recipe = Recipe(
        model_name_or_path=str(tiny_model_dir),
        bf16=False,
        lora_target="q_proj,v_proj",
        freeze_multi_modal_projector=False,
    )
    trainable = _trainable(build_model(recipe, family))
    lora = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if "lora_" in name}
    assert lora == {"q_proj", "v_proj"}
    others = [name for name in trainable if "lora_" not in name]
    assert others and all("merger" in name for name in others)


def test_full_fine_tuning_freezes_the_vision_tower_by_default(tiny_model_dir, family):
    model = build_model(
        Recipe(model_name_or_path=str(tiny_model_dir), bf16=False, finetuning_type="full"), family
    )
    trainable = _trainable(model)
    assert any("language_model" in name for name in trainable)
    assert not any(".visual." in f".{name}" for name in trainable)
    model = build_model(
        Recipe(
            model_name_or_path=str(tiny_model_dir),
            bf16=False,
            finetuning_type="full",
            freeze_vision_tower=False,
            freeze_multi_modal_projector=False,
        ),
        family,
    )
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_qlora_on_cpu_is_a_clear_error(tiny_model_dir, family):
    with pytest.raises(RecipeError, match="qlora needs a CUDA GPU"):
        build_model(Recipe(model_name_or_path=str(tiny_model_dir), finetuning_type="qlora"), family)


def test_attention_auto_is_sdpa_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_implementation(Recipe()) == "sdpa"
    assert attention_implementation(Recipe(attn_implementation="eager")) == "eager"
