"""The training recipe: defaults, layering, parsing, strict validation and the shipped YAML files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from ctscribe.recipe import (
    Recipe,
    RecipeError,
    builtin_recipe,
    load_recipe,
    parameter_sharding,
    parse_override,
    validate,
)


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_original_llamafactory_recipe() -> None:
    recipe = Recipe()
    assert recipe.model_name_or_path == "Qwen/Qwen2-VL-2B-Instruct"
    assert recipe.finetuning_type == "lora"
    assert (recipe.lora_rank, recipe.lora_alpha, recipe.lora_dropout) == (8, 16, 0.0)
    assert recipe.learning_rate == 5e-5
    assert recipe.num_train_epochs == 3.0
    assert recipe.per_device_train_batch_size == 2
    assert recipe.gradient_accumulation_steps == 8
    assert recipe.bf16 == "auto"
    assert (recipe.logging_steps, recipe.save_steps) == (5, 3000)
    assert recipe.max_samples == 100000
    validate(recipe)


def test_speed_switches_are_on_by_default_and_each_can_be_turned_off() -> None:
    recipe = Recipe()
    assert recipe.loss_on_labelled_only and recipe.packing == "auto" and recipe.group_by_length
    assert recipe.cache_vision_features == "auto" and recipe.vision_feature_cache_dir is None
    off = load_recipe(
        overrides=[
            "loss_on_labelled_only=false",
            "packing=false",
            "group_by_length=false",
            "cache_vision_features=false",
            "vision_feature_cache_dir=/data/cache",
        ]
    )
    assert not (off.loss_on_labelled_only or off.packing or off.group_by_length or off.cache_vision_features)
    assert off.vision_feature_cache_dir == "/data/cache"


def test_original_yaml_equals_the_defaults_and_lists_every_key_in_order() -> None:
    assert load_recipe("original") == Recipe()
    keys = list(yaml.safe_load(builtin_recipe("original").read_text(encoding="utf-8")))
    assert keys == [field.name for field in dataclasses.fields(Recipe)]


def test_tiny_cpu_recipe_loads_and_validates() -> None:
    recipe = load_recipe("tiny-cpu")
    assert recipe.finetuning_type == "full"
    assert not recipe.freeze_vision_tower
    assert not recipe.freeze_multi_modal_projector
    assert recipe.learning_rate == 1e-3
    assert (recipe.per_device_train_batch_size, recipe.gradient_accumulation_steps) == (8, 1)
    assert (recipe.image_max_pixels, recipe.image_min_pixels, recipe.cutoff_len) == (12544, 3136, 256)
    assert (recipe.max_steps, recipe.logging_steps, recipe.save_steps, recipe.eval_steps) == (
        400,
        10,
        100,
        100,
    )
    assert recipe.gradient_checkpointing is False
    assert recipe.bf16 is False
    assert recipe.report_to == "none"
    assert recipe.dataloader_num_workers == 0
    assert (recipe.lr_scheduler_type, recipe.warmup_ratio) == ("constant_with_warmup", 0.05)
    assert recipe.max_samples is None
    assert recipe.model_name_or_path == Recipe().model_name_or_path


def test_builtin_recipe_path_and_unknown_name() -> None:
    assert builtin_recipe("tiny-cpu").name == "tiny-cpu.yaml"
    with pytest.raises(RecipeError, match=r"unknown built-in recipe 'tiny'; available: original, tiny-cpu"):
        builtin_recipe("tiny")


def test_an_existing_file_wins_over_a_builtin_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "lora_rank: 4\n", name="tiny-cpu")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("tiny-cpu").lora_rank == 4


def test_layers_later_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "lora_rank: 16\nlearning_rate: 1e-4\nsave_steps: 10\noutput_dir: from-yaml\n")
    recipe = load_recipe(
        path, ["save_steps=20", "output_dir=from-set"], output_dir="from-cli", dataset_dir=None
    )
    assert recipe.lora_rank == 16  # YAML over the default
    assert recipe.learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as a string; the float field converts it
    assert recipe.save_steps == 20  # --set over YAML
    assert recipe.output_dir == "from-cli"  # a fixed value over --set
    assert recipe.dataset_dir is None  # a fixed None means "not given"
    assert recipe.lora_alpha == 16  # untouched default


def test_a_fixed_none_keeps_the_lower_layer() -> None:
    assert load_recipe(None, ["output_dir=runs/a"], output_dir=None).output_dir == "runs/a"


def test_fixed_paths_become_strings(tmp_path: Path) -> None:
    recipe = load_recipe(dataset_dir=tmp_path / "data", model_name_or_path=tmp_path / "tiny")
    assert (recipe.dataset_dir, recipe.model_name_or_path) == (str(tmp_path / "data"), str(tmp_path / "tiny"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lora_rank=16", ("lora_rank", 16)),
        ("learning_rate=1e-4", ("learning_rate", 0.0001)),
        ("learning_rate=5e-5", ("learning_rate", 5e-5)),
        ("learning_rate=0.0002", ("learning_rate", 0.0002)),
        ("num_train_epochs=2", ("num_train_epochs", 2.0)),
        ("gradient_checkpointing=false", ("gradient_checkpointing", False)),
        ("bf16=true", ("bf16", True)),
        ("bf16=auto", ("bf16", "auto")),
        ("eval_steps=null", ("eval_steps", None)),
        ("max_samples=~", ("max_samples", None)),
        ("lora_target=q_proj,v_proj", ("lora_target", "q_proj,v_proj")),
        ("fsdp=full_shard auto_wrap", ("fsdp", "full_shard auto_wrap")),
        ("output_dir=runs/a=b", ("output_dir", "runs/a=b")),
        (" lora_rank = 4", ("lora_rank", 4)),
    ],
)
def test_parse_override_types(text: str, expected: tuple[str, object]) -> None:
    key, value = parse_override(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize("text", ["lora_rank", "=16", ""])
def test_parse_override_needs_key_and_value(text: str) -> None:
    with pytest.raises(RecipeError, match=r"must look like key=value"):
        parse_override(text)


def test_parse_override_invalid_yaml_value() -> None:
    with pytest.raises(RecipeError, match=r"override 'fsdp=\[a': '\[a' is not a valid YAML value"):
        parse_override("fsdp=[a")


def test_unknown_key_in_yaml_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "lora_rnak: 16\n")
    with pytest.raises(
        RecipeError, match=r"recipe\.yaml: unknown recipe key 'lora_rnak'; did you mean 'lora_rank'\?$"
    ):
        load_recipe(path)


def test_unknown_key_in_override_suggests_the_closest() -> None:
    with pytest.raises(
        RecipeError, match=r"^unknown recipe key 'learnig_rate'; did you mean 'learning_rate'\?$"
    ):
        load_recipe(overrides=["learnig_rate=1e-4"])


def test_llamafactory_names_that_differ_point_to_ours() -> None:
    with pytest.raises(
        RecipeError, match=r"unknown recipe key 'flash_attn'; did you mean 'attn_implementation'\?"
    ):
        parse_override("flash_attn=fa2")


def test_unknown_key_without_close_match_lists_the_known_keys() -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe key 'zzz'; known keys: model_name_or_path, "):
        parse_override("zzz=1")


def test_unknown_fixed_key() -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe key 'data'"):
        load_recipe(data="x")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora_rank=eight", r"lora_rank must be an integer, got 'eight'"),
        ("lora_rank=true", r"lora_rank must be an integer, got true"),
        ("lora_rank=8.0", r"lora_rank must be an integer, got 8\.0"),
        ("lora_rank=null", r"lora_rank must be an integer, got null"),
        ("learning_rate=fast", r"learning_rate must be a number, got 'fast'"),
        ("learning_rate=yes", r"learning_rate must be a number, got true"),
        ("learning_rate=.nan", r"learning_rate must be a number, got nan"),
        ("gradient_checkpointing=1", r"gradient_checkpointing must be true or false, got 1"),
        ("eval_steps=often", r"eval_steps must be an integer or null, got 'often'"),
        ("output_dir=3", r"output_dir must be a string or null, got 3"),
        ("finetuning_type=LoRA", r"finetuning_type must be one of 'lora', 'qlora', 'full', got 'LoRA'"),
        ("bf16=fp16", r"bf16 must be 'auto', true or false, got 'fp16'"),
        ("report_to=wandb", r"report_to must be one of 'tensorboard', 'none', got 'wandb'"),
        ("lora_target=[q_proj]", r"lora_target must be a string, got \['q_proj'\]"),
        ("packing=1", r"packing must be 'auto', true or false, got 1"),
        ("group_by_length=maybe", r"group_by_length must be true or false, got 'maybe'"),
        ("loss_on_labelled_only=null", r"loss_on_labelled_only must be true or false, got null"),
        (
            "cache_vision_features=always",
            r"cache_vision_features must be 'auto', true or false, got 'always'",
        ),
        ("vision_feature_cache_dir=5", r"vision_feature_cache_dir must be a string or null, got 5"),
    ],
)
def test_wrong_types(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=f"^{message}$"):
        load_recipe(overrides=[override])


def test_wrong_type_in_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "lora_rank: eight\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: lora_rank must be an integer, got 'eight'"):
        load_recipe(path)


def test_ints_become_floats_for_float_fields(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "num_train_epochs: 2\nlearning_rate: 5e-5\nmax_grad_norm: 0\n"))
    assert recipe.num_train_epochs == 2.0
    assert isinstance(recipe.num_train_epochs, float)
    assert recipe.learning_rate == 5e-5
    assert isinstance(recipe.max_grad_norm, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learning_rate=0"], r"learning_rate must be > 0, got 0\.0"),
        (["learning_rate=-1e-4"], r"learning_rate must be > 0, got -0\.0001"),
        (["lora_rank=0"], r"lora_rank must be >= 1, got 0"),
        (["lora_alpha=0"], r"lora_alpha must be >= 1, got 0"),
        (["lora_dropout=1"], r"lora_dropout must be >= 0 and < 1, got 1\.0"),
        (["lora_dropout=-0.1"], r"lora_dropout must be >= 0 and < 1, got -0\.1"),
        (["num_train_epochs=0"], r"num_train_epochs must be > 0 unless max_steps > 0, got 0\.0"),
        (["max_steps=0"], r"max_steps must be -1 \(train for num_train_epochs\) or >= 1, got 0"),
        (["per_device_train_batch_size=0"], r"per_device_train_batch_size must be >= 1, got 0"),
        (["per_device_eval_batch_size=0"], r"per_device_eval_batch_size must be >= 1, got 0"),
        (["gradient_accumulation_steps=0"], r"gradient_accumulation_steps must be >= 1, got 0"),
        (["logging_steps=0"], r"logging_steps must be >= 1, got 0"),
        (["save_steps=0"], r"save_steps must be >= 1, got 0"),
        (["eval_steps=0"], r"eval_steps must be >= 1 or null, got 0"),
        (["image_min_pixels=100"], r"image_min_pixels must be >= 784 \(one 28x28 image token\), got 100"),
        (
            ["image_min_pixels=4096", "image_max_pixels=3136"],
            r"image_min_pixels \(4096\) must be <= image_max_pixels \(3136\)",
        ),
        (["cutoff_len=32"], r"cutoff_len must be >= 64, got 32"),
        (["max_samples=0"], r"max_samples must be >= 1 or null, got 0"),
        (["warmup_ratio=1"], r"warmup_ratio must be >= 0 and < 1, got 1\.0"),
        (["weight_decay=-0.01"], r"weight_decay must be >= 0, got -0\.01"),
        (["vision_feature_cache_max_gb=-1"], r"vision_feature_cache_max_gb must be >= 0 or null, got -1\.0"),
        (["save_total_limit=0"], r"save_total_limit must be >= 1, got 0"),
        (["lora_target=q_proj;v_proj"], r"lora_target must be 'all' or comma-separated module names"),
        (["model_name_or_path=' '"], r"model_name_or_path must not be empty"),
        (["vision_feature_cache_dir=''"], r"vision_feature_cache_dir must not be empty"),
        (
            ["cache_vision_features=true", "freeze_vision_tower=false"],
            r"cache_vision_features: true needs freeze_vision_tower and freeze_multi_modal_projector",
        ),
        (
            ["save_steps=150", "eval_steps=100"],
            r"save_steps \(150\) must be a multiple of eval_steps \(100\)",
        ),
        (
            ["cache_vision_features=true", "fsdp='full_shard auto_wrap'"],
            r"cache_vision_features: true cannot run with FSDP: the cache looks the vision features up",
        ),
    ],
)
def test_value_ranges(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=f"^{message}"):
        load_recipe(overrides=overrides)


def test_a_bad_recipe_fails_before_any_data_or_model_is_looked_at(tmp_path: Path) -> None:
    """Recipe-only checks run at load, so the data and model paths (absent here) are never opened."""
    absent = {"dataset_dir": tmp_path / "no-data", "output_dir": tmp_path / "run"}
    with pytest.raises(RecipeError, match=r"^save_steps \(3000\) must be a multiple of eval_steps \(7\)"):
        load_recipe("original", ["eval_steps=7"], model_name_or_path=tmp_path / "no-model", **absent)
    assert not (tmp_path / "run").exists()


def test_the_feature_cache_is_refused_where_the_weights_are_sharded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZeRO-3 and FSDP shard the vision tower the cache runs on the unwrapped model: ``true`` is an
    error, from the recipe or from ``accelerate launch``'s environment; ZeRO-2 and no_shard are not."""
    zero = tmp_path / "zero.json"
    for stage, sharded in ((2, None), (3, "DeepSpeed ZeRO-3")):
        zero.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
        assert parameter_sharding(Recipe(deepspeed=str(zero))) == sharded
    with pytest.raises(RecipeError, match="cannot run with DeepSpeed ZeRO-3"):
        load_recipe(overrides=["cache_vision_features=true", f"deepspeed={zero}"])
    assert parameter_sharding(Recipe(fsdp="no_shard")) is None
    load_recipe(overrides=["cache_vision_features=true"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RecipeError, match="cannot run with FSDP"):
        load_recipe(overrides=["cache_vision_features=true"])
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert parameter_sharding(Recipe()) == "DeepSpeed ZeRO-3"


def test_max_steps_allows_zero_epochs() -> None:
    recipe = load_recipe(overrides=["num_train_epochs=0", "max_steps=10"])
    assert (recipe.num_train_epochs, recipe.max_steps) == (0.0, 10)


def test_validate_checks_a_recipe_built_in_code() -> None:
    with pytest.raises(RecipeError, match=r"^lora_rank must be an integer, got '8'$"):
        validate(Recipe(lora_rank="8"))  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["- lora_rank: 8\n", "just a string\n", "42\n"])
def test_yaml_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=r"recipe\.yaml: the top level must be a mapping"):
        load_recipe(path)


def test_empty_yaml_means_all_defaults(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, "# nothing changed\n")) == Recipe()


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "lora_rank: 8\nlora_alpha: [16\nseed: 1\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: YAML syntax error at line \d+: "):
        load_recipe(path)


def test_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "lora_rank: 8\nseed: 1\nlora_rank: 16\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: line 3: key 'lora_rank' is given twice"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match=rf"^recipe file {missing} not found$"):
        load_recipe(missing)


def test_a_directory_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"is not a file"):
        load_recipe(tmp_path)


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(
        "tiny-cpu",
        ["learning_rate=3e-4", "lora_target=q_proj,v_proj", "fsdp=full_shard auto_wrap", "bf16=auto"],
        output_dir="runs/x",
    )
    text = recipe.to_yaml()
    assert text.startswith("# ")
    assert list(yaml.safe_load(text)) == [field.name for field in dataclasses.fields(Recipe)]
    assert load_recipe(write(tmp_path, text)) == recipe
    assert load_recipe(write(tmp_path, Recipe().to_yaml(), name="default.yaml")) == Recipe()


def test_to_dict_is_plain_and_ordered() -> None:
    data = Recipe().to_dict()
    assert list(data) == [field.name for field in dataclasses.fields(Recipe)]
    assert data["lora_rank"] == 8
