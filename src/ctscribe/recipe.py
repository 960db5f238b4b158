"""The training recipe: every setting of a run, typed, validated, and written back as YAML.

A recipe is one YAML file plus ``--set key=value`` overrides, read by ``ctscribe train`` (both the
native transformers + PEFT engine and the LLaMA-Factory engine), ``ctscribe bench`` and ``ctscribe
demo``. Keys use LLaMA-Factory's names so its users recognise them, and the built-in default is the
original project's LLaMA-Factory recipe (``recipes/original.yaml``).

Loading is strict: an unknown key, a value of the wrong type or out of range stops the run before any
model is loaded, with a one-line message naming the key and what is allowed. A typo silently ignored
would otherwise cost a whole training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from ctscribe.models import DEFAULT_FAMILY, SMALLEST_TOKEN_PIXELS

# Scores of ``ctscribe evaluate`` a checkpoint can be chosen by (higher is better), as
# ctscribe.evaluate.checkpoint_scores computes them on generated descriptions; eval_loss is lower-better.
BestModelMetric = Literal["eval_loss", "abnormality_f1", "region_acc", "rouge_l", "box_iou"]
CLINICAL_METRICS: tuple[str, ...] = typing.get_args(BestModelMetric)[1:]

RECIPES_DIR = Path(__file__).with_name("recipes")

# An image needs at least one image token (of the base's family, which validation does not load).
MIN_IMAGE_PIXELS = SMALLEST_TOKEN_PIXELS
# Shorter than this, a sequence cannot even hold the chat template, an image and a short caption.
MIN_CUTOFF_LEN = 64

# A decimal or scientific number. YAML 1.1 (PyYAML) reads "1e-4" and "5e-5" as strings because they
# lack a dot; float fields accept such strings. "nan", "inf" and "1_000" are deliberately not numbers.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_MODULE_NAME = re.compile(r"[A-Za-z_][\w.]*")
# LLaMA-Factory keys that ctscribe names as transformers does: suggested on a miss, never accepted.
_RENAMED = {"flash_attn": "attn_implementation", "enable_liger_kernel": "use_liger_kernel"}


@dataclass
class Recipe:
    """One training run's settings; defaults are the original LLaMA-Factory recipe (train.sh)."""

    # model
    model_name_or_path: str = DEFAULT_FAMILY.example_checkpoint
    finetuning_type: Literal["lora", "qlora", "full"] = "lora"  # qlora = LoRA on a 4-bit base (GPU only)
    freeze_vision_tower: bool = True
    freeze_multi_modal_projector: bool = True
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all"  # "all" = every linear layer of the language model, or "q_proj,v_proj"
    # data
    dataset_dir: str | None = None  # prepared data folder (train.json, val.json); `--data` sets it
    image_max_pixels: int = DEFAULT_MAX_PIXELS  # the same budget as `ctscribe prepare`
    image_min_pixels: int = DEFAULT_MIN_PIXELS
    cutoff_len: int = 2048
    max_samples: int | None = 100000
    # training
    output_dir: str | None = None  # `--out` sets it
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: Literal["auto"] | bool = "auto"  # "auto": bf16 where the hardware supports it
    gradient_checkpointing: bool = True
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    use_liger_kernel: Literal["auto"] | bool = "auto"
    # speed (docs/TRAINING.md "Speed"): each changes how fast a step runs, never what it computes
    loss_on_labelled_only: bool = True  # the LM head (151,936 wide) only where a label is
    cache_vision_features: Literal["auto"] | bool = "auto"  # "auto": when tower and projector are frozen
    vision_feature_cache_dir: str | None = None  # None: RUN_DIR/feature_cache
    vision_feature_cache_max_gb: float | None = 200.0  # larger estimates train without the cache
    # Each micro-batch's samples packed into rows, attention kept per sample; "auto": on unless the
    # base's family cannot keep packed samples apart (ctscribe.models, Family.limits).
    packing: Literal["auto"] | bool = "auto"
    group_by_length: bool = True  # batches of similar length (less padding), order still seeded
    logging_steps: int = 5
    save_steps: int = 3000
    eval_steps: int | None = None  # None: evaluate when saving
    save_total_limit: int = 3
    # The score that names the best checkpoint: eval_loss, or a clinical score of descriptions the
    # native engine generates on the first generation_eval_samples validation records at each
    # evaluation (docs/TRAINING.md "Choosing the best checkpoint"); LLaMA-Factory knows eval_loss only.
    metric_for_best_model: BestModelMetric = "eval_loss"
    generation_eval_samples: int = 32  # the fixed validation subset a clinical metric is scored on
    seed: int = 42
    dataloader_num_workers: int = 2
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    fsdp: str = ""  # transformers' fsdp option string, e.g. "full_shard auto_wrap"

    def to_dict(self) -> dict:
        """All settings in field order, as plain values (what the engines and run records consume)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML, every key in field order, so a run can be reproduced from it."""
        header = (
            "# ctscribe training recipe, fully resolved: defaults, recipe file, overrides.\n"
            "# Keys use LLaMA-Factory's names; load this file as a recipe to repeat the run.\n"
        )
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


class RecipeError(ValueError):
    """A recipe that cannot be used; ``str()`` is a one-line message a user can act on."""


@dataclass(frozen=True)
class _FieldSpec:
    """What one field accepts, read from its type hint so the hints stay the single source of truth."""

    literals: tuple[object, ...]
    kinds: tuple[type, ...]
    nullable: bool

    def describe(self) -> str:
        """The allowed values in words, e.g. "an integer or null", "one of 'lora', 'qlora', 'full'"."""
        words = {int: ["an integer"], float: ["a number"], str: ["a string"], bool: ["true", "false"]}
        items = [_show(value) for value in self.literals]
        for kind in self.kinds:
            items += words[kind]
        if self.nullable:
            items.append("null")
        if self.literals and not self.kinds:
            return "one of " + ", ".join(items)
        if len(items) == 1:
            return items[0]
        return ", ".join(items[:-1]) + " or " + items[-1]


def _spec(hint: object) -> _FieldSpec:
    """Flatten ``X | None``, ``Literal[...]`` and ``Literal[...] | bool`` into a :class:`_FieldSpec`."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    literals: tuple[object, ...] = ()
    kinds: tuple[type, ...] = ()
    for member in members:
        if typing.get_origin(member) is Literal:
            literals += typing.get_args(member)
        elif member is not type(None):
            kinds += (member,)
    return _FieldSpec(literals, kinds, type(None) in members)


_SPECS: dict[str, _FieldSpec] = {name: _spec(hint) for name, hint in typing.get_type_hints(Recipe).items()}


def _show(value: object) -> str:
    """A value as the user wrote it in YAML: null, true/false, quoted strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_key(key: object) -> str:
    """``key`` if it is a recipe key, else an error suggesting the closest known keys.

    Only suggestions about as close as the best are named, so a typo gets one clear answer.
    """
    if isinstance(key, str) and key in _SPECS:
        return key
    name = str(key)
    if name in _RENAMED:
        close = [_RENAMED[name]]
    else:
        close = difflib.get_close_matches(name, _SPECS, n=3)
        scores = [difflib.SequenceMatcher(None, known, name).ratio() for known in close]
        close = [known for known, score in zip(close, scores, strict=True) if score >= scores[0] - 0.1]
    hint = " or ".join(repr(known) for known in close)
    advice = f"did you mean {hint}?" if close else "known keys: " + ", ".join(_SPECS)
    raise RecipeError(f"unknown recipe key {name!r}; {advice}")


def _as_number(value: object) -> float | None:
    """``value`` as a finite float (ints and numeric-looking strings included), else None."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _coerce(key: str, value: object) -> object:
    """``value`` checked against the type of ``key``; ints and numeric strings become floats for floats.

    Bools are never numbers here (YAML's ``yes`` would otherwise train with ``lora_rank: 1``), and
    numbers are never strings: a wrong type is far more often a mistake than an intent.
    """
    spec = _SPECS[key]
    if value is None:
        if spec.nullable:
            return None
    elif any(type(value) is type(allowed) and value == allowed for allowed in spec.literals):
        return value
    elif isinstance(value, bool):
        if bool in spec.kinds:
            return value
    elif float in spec.kinds:
        number = _as_number(value)
        if number is not None:
            return number
    elif (isinstance(value, int) and int in spec.kinds) or (isinstance(value, str) and str in spec.kinds):
        return value
    raise RecipeError(f"{key} must be {spec.describe()}, got {_show(value)}")


def parse_override(text: str) -> tuple[str, object]:
    """``"lora_rank=16"`` -> ``("lora_rank", 16)``: the value is YAML, checked against the key's type."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {text!r} must look like key=value, e.g. lora_rank=16")
    key = _check_key(key)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise RecipeError(f"override {text!r}: {raw!r} is not a valid YAML value (quote it)") from None
    return key, _coerce(key, value)


def _builtin_names() -> list[str]:
    """The names of the recipes shipped in the package, e.g. ["original", "tiny-cpu"]."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def builtin_recipe(name: str) -> Path:
    """The path of the recipe shipped as ``recipes/<name>.yaml`` inside the package."""
    names = _builtin_names()
    if name not in names:
        raise RecipeError(f"unknown built-in recipe {name!r}; available: {', '.join(names)}")
    return RECIPES_DIR / f"{name}.yaml"


def _resolve(path: str | os.PathLike) -> Path:
    """An existing file wins; otherwise a bare name such as "tiny-cpu" means a built-in recipe."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if isinstance(path, str) and path in _builtin_names():
        return builtin_recipe(path)
    if candidate.exists():
        raise RecipeError(f"recipe {os.fspath(path)} is not a file")
    raise RecipeError(f"recipe file {os.fspath(path)} not found")


def _read_yaml(path: Path) -> dict[str, object]:
    """The file's settings, each key known and each value of the right type (errors name the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if isinstance(node, yaml.MappingNode):
            seen: set[object] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a list or mapping as a key: rejected below as an unknown key
                if key_node.value in seen:
                    line = key_node.start_mark.line + 1
                    raise RecipeError(f"{path}: line {line}: key {key_node.value!r} is given twice")
                seen.add(key_node.value)
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        reason = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise RecipeError(f"{path}: YAML syntax error{where}: {reason}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: YAML syntax error: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of key: value, got {type(data).__name__}")
    try:
        return {_check_key(key): _coerce(key, value) for key, value in data.items()}
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def load_recipe(
    path: str | os.PathLike | None = None, overrides: Sequence[str] = (), **fixed: object
) -> Recipe:
    """Defaults <- YAML file (a path or a built-in name) <- ``key=value`` overrides <- ``fixed``.

    Later layers win. ``fixed`` carries the CLI's own options (``--data``, ``--out``, ``--model``);
    a None there means "not given" and leaves the lower layers alone, and paths become strings. The
    result is validated as a whole, since some rules (image_min_pixels <= image_max_pixels) span keys
    set in different layers.
    """
    values: dict[str, object] = {}
    if path is not None:
        values.update(_read_yaml(_resolve(path)))
    values.update(parse_override(text) for text in overrides)
    for key, value in fixed.items():
        if value is not None:
            name = _check_key(key)
            values[name] = _coerce(name, os.fspath(value) if isinstance(value, os.PathLike) else value)
    recipe = Recipe(**values)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    """Raise :class:`RecipeError` for the first setting of the wrong type or out of range.

    Types are checked here too, not only when loading, because a dataclass does not check them and
    code may build a :class:`Recipe` directly.
    """
    v = {key: _coerce(key, getattr(recipe, key)) for key in _SPECS}

    for key in ("model_name_or_path", "dataset_dir", "output_dir", "deepspeed", "vision_feature_cache_dir"):
        if v[key] is not None and not str(v[key]).strip():
            raise RecipeError(f"{key} must not be empty")
    at_least_one = (
        "lora_rank",
        "lora_alpha",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "max_samples",
        "save_total_limit",
        "generation_eval_samples",
    )
    for key in at_least_one:
        if v[key] is not None and v[key] < 1:
            raise RecipeError(f"{key} must be >= 1{' or null' if _SPECS[key].nullable else ''}, got {v[key]}")
    for key in ("weight_decay", "max_grad_norm", "seed", "dataloader_num_workers"):
        if v[key] < 0:
            raise RecipeError(f"{key} must be >= 0, got {v[key]}")
    for key in ("lora_dropout", "warmup_ratio"):
        if not 0 <= v[key] < 1:
            raise RecipeError(f"{key} must be >= 0 and < 1, got {v[key]}")
    if v["learning_rate"] <= 0:
        raise RecipeError(f"learning_rate must be > 0, got {v['learning_rate']}")
    if v["max_steps"] != -1 and v["max_steps"] < 1:
        raise RecipeError(f"max_steps must be -1 (train for num_train_epochs) or >= 1, got {v['max_steps']}")
    if v["max_steps"] == -1 and v["num_train_epochs"] <= 0:
        raise RecipeError(f"num_train_epochs must be > 0 unless max_steps > 0, got {v['num_train_epochs']}")
    if v["image_min_pixels"] < MIN_IMAGE_PIXELS:
        side = math.isqrt(MIN_IMAGE_PIXELS)
        raise RecipeError(
            f"image_min_pixels must be >= {MIN_IMAGE_PIXELS} (one {side}x{side} image token), "
            f"got {v['image_min_pixels']}"
        )
    if v["image_min_pixels"] > v["image_max_pixels"]:
        raise RecipeError(
            f"image_min_pixels ({v['image_min_pixels']}) must be <= "
            f"image_max_pixels ({v['image_max_pixels']})"
        )
    if v["cutoff_len"] < MIN_CUTOFF_LEN:
        raise RecipeError(f"cutoff_len must be >= {MIN_CUTOFF_LEN}, got {v['cutoff_len']}")
    targets = [name.strip() for name in v["lora_target"].split(",")]
    if v["lora_target"] != "all" and not all(_MODULE_NAME.fullmatch(name) for name in targets):
        raise RecipeError(
            "lora_target must be 'all' or comma-separated module names like 'q_proj,v_proj', "
            f"got {v['lora_target']!r}"
        )
    if v["vision_feature_cache_max_gb"] is not None and v["vision_feature_cache_max_gb"] < 0:
        raise RecipeError(
            f"vision_feature_cache_max_gb must be >= 0 or null, got {v['vision_feature_cache_max_gb']}"
        )
    if v["cache_vision_features"] is True and not (
        v["freeze_vision_tower"] and v["freeze_multi_modal_projector"]
    ):
        raise RecipeError(
            "cache_vision_features: true needs freeze_vision_tower and freeze_multi_modal_projector "
            "(cached features would go stale as the tower trains); use auto or false"
        )
    sharded = parameter_sharding(recipe)
    if v["cache_vision_features"] is True and sharded:
        raise RecipeError(
            f"cache_vision_features: true cannot run with {sharded}: the cache looks the vision "
            "features up on the unwrapped model, whose weights it shards; use auto (off there) or false"
        )
    eval_steps = v["eval_steps"] or v["save_steps"]
    if v["save_steps"] % eval_steps:
        raise RecipeError(
            f"save_steps ({v['save_steps']}) must be a multiple of eval_steps ({eval_steps}) "
            "to keep the best checkpoint"
        )


def parameter_sharding(recipe: Recipe) -> str | None:
    """``"FSDP"`` or ``"DeepSpeed ZeRO-3"`` when the run shards the model's weights across processes,
    else None: from the recipe, or from ``accelerate launch --config_file`` (which says so in the
    environment it starts ctscribe in). A DeepSpeed config that cannot be read is left to DeepSpeed."""
    launched_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    if launched_fsdp or (recipe.fsdp and "no_shard" not in recipe.fsdp):
        return "FSDP"
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "DeepSpeed ZeRO-3"
    if recipe.deepspeed:
        try:
            config = json.loads(Path(recipe.deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(config, dict) and (config.get("zero_optimization") or {}).get("stage") == 3:
            return "DeepSpeed ZeRO-3"
    return None


def training_folders(recipe: Recipe) -> tuple[Path, Path]:
    """(dataset_dir, output_dir): a recipe names both before either engine trains."""
    if not recipe.dataset_dir or not recipe.output_dir:
        raise RecipeError("the recipe needs dataset_dir (--data) and output_dir (--out)")
    return Path(recipe.dataset_dir), Path(recipe.output_dir)
