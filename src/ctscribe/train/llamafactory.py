"""Train with LLaMA-Factory: the same recipe, written as its YAML and run by ``llamafactory-cli train``.

The recipe's keys already use LLaMA-Factory's names, so most pass straight through; this module
names the few that differ (``bf16: auto``, ``gradient_checkpointing``, ``attn_implementation``,
QLoRA) and the keys only the native engine has. LLaMA-Factory reads ctscribe's prepared folder
unchanged through its ``dataset_info.json``.

RUN_DIR after a run, laid out like a native run so export, predict, evaluate and serve take either::

    recipe.yaml              the resolved ctscribe recipe
    llamafactory_train.yaml  what LLaMA-Factory was given (rerun it with llamafactory-cli train)
    llamafactory/            LLaMA-Factory's output_dir: checkpoints, its logs, trainer_log.jsonl
    llamafactory_data/       only for a family whose boxes are pixels: the split files with its boxes
    llamafactory.log         everything it printed
    adapter/ (or model/)     the final adapter (or full model) with the processor and the settings
                             it carries (ctscribe.model_settings: pixel budget, prompts)
    train_log.jsonl          ctscribe's log format, converted from trainer_log.jsonl
    loss.png, run_summary.json  as the native engine's (ctscribe.run_folder; the same summary keys)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from PIL import Image

from ctscribe.atomic import atomic_write_text
from ctscribe.conversation.boxes import messages_to_model, one_frame
from ctscribe.llamafactory_cli import find_cli, has_module, run_cli, write_config
from ctscribe.model_settings import check_data_budget, record_settings, training_settings
from ctscribe.models import Family, family_for
from ctscribe.models.family import ImageGrid
from ctscribe.prepare.splits import read_split
from ctscribe.recipe import Recipe, RecipeError, training_folders
from ctscribe.run_folder import (
    LOSS_PLOT,
    TRAIN_LOG,
    RunSummary,
    claim_run_dir,
    final_folder,
    plot_loss,
    publish,
    staging_folder,
    write_log,
    write_recipe,
)
from ctscribe.train.model import use_bf16

log = logging.getLogger(__name__)

OUTPUT_SUBDIR = "llamafactory"
# Recipe keys with the same name and meaning in LLaMA-Factory's arguments.
SAME_NAME = (
    "model_name_or_path",
    "freeze_vision_tower",
    "freeze_multi_modal_projector",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "dataset_dir",
    "image_max_pixels",
    "image_min_pixels",
    "cutoff_len",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "seed",
    "dataloader_num_workers",
    "report_to",
)
# ctscribe's own speed-ups (docs/TRAINING.md "Speed"): they change how fast the native engine runs,
# never what it computes, and LLaMA-Factory 0.9.5 has no equivalent (its transformers 5.6 dropped
# group_by_length and refuses the key), so its runs are its own.
NATIVE_ONLY = (
    "loss_on_labelled_only",
    "cache_vision_features",
    "vision_feature_cache_dir",
    "vision_feature_cache_max_gb",
    "packing",
    "group_by_length",
)
# Choosing the best checkpoint by a clinical score needs descriptions generated at each evaluation;
# LLaMA-Factory has no hook for a generation-time metric, so it refuses any but eval_loss
# (refuse_native_scoring) and its runs name no best checkpoint.
NATIVE_SCORING = ("metric_for_best_model", "generation_eval_samples")
# Recipe keys translated below (or, like max_samples and deepspeed, passed only when set).
TRANSLATED = (
    "finetuning_type",
    "max_samples",
    "output_dir",
    "bf16",
    "gradient_checkpointing",
    "attn_implementation",
    "use_liger_kernel",
    "eval_steps",
    "deepspeed",
    "fsdp",
)
FLASH_ATTN = {"auto": "auto", "sdpa": "sdpa", "eager": "disabled", "flash_attention_2": "fa2"}
# LLaMA-Factory's own log files, kept in llamafactory/ and not copied into adapter/.
LOG_FILES = {
    "trainer_log.jsonl",
    "trainer_state.json",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "training_args.bin",
    "README.md",
}


def dataset_names(data_dir: Path) -> tuple[str, str | None]:
    """The ``dataset_info.json`` names of the train split and of the validation split (if non-empty)."""
    info_path = data_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(
            f"{info_path} not found: is --data a folder written by `ctscribe prepare`?"
        ) from None
    by_file = {entry.get("file_name"): name for name, entry in info.items() if isinstance(entry, dict)}
    if "train.json" not in by_file:
        raise RecipeError(f"{info_path} has no entry for train.json")
    val = by_file.get("val.json")
    val_path = data_dir / "val.json"
    if val and (not val_path.is_file() or not json.loads(val_path.read_text(encoding="utf-8"))):
        val = None
    return by_file["train.json"], val


def llamafactory_image_size(
    width: int, height: int, max_pixels: int, min_pixels: int, processor_size: dict, grid: ImageGrid
) -> tuple[int, int]:
    """(width, height) at which LLaMA-Factory 0.9.5 gives the model a ``width`` x ``height`` image.

    Its own resize first (``BasePlugin._preprocess_image``: each side scaled into the recipe's budget
    and floored; then at least 28 pixels a side), then the processor's, at the budget in the base's
    processor config (``processor_size``: shortest_edge/longest_edge), not the recipe's.
    """

    def scale(budget: int) -> tuple[int, int]:
        factor = math.sqrt(budget / (width * height))
        return int(width * factor), int(height * factor)

    if width * height > max_pixels:
        width, height = scale(max_pixels)
    if width * height < min_pixels:
        width, height = scale(min_pixels)
    width, height = max(width, 28), max(height, 28)
    new_height, new_width = grid.resize(
        height, width, processor_size["shortest_edge"], processor_size["longest_edge"]
    )
    return new_width, new_height


def family_data(recipe: Recipe, family: Family) -> Path:
    """The folder LLaMA-Factory reads the splits from (its images stay in the prepared folder).

    LLaMA-Factory trains on answers as written, and prepared records keep boxes on the 0-1000 grid.
    That is a grid family's own convention, so the prepared folder serves unchanged; for a family
    whose boxes are pixels of the image it sees, the split files are written again under the run
    folder with each record's boxes in pixels of its image as LLaMA-Factory will resize it.
    """
    data_dir, run_dir = training_folders(recipe)
    if not family.grounding.absolute:
        return data_dir
    from transformers import AutoImageProcessor

    processor_size = AutoImageProcessor.from_pretrained(recipe.model_name_or_path).size
    out = run_dir / "llamafactory_data"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(data_dir / "dataset_info.json", out / "dataset_info.json")
    budget = (recipe.image_max_pixels, recipe.image_min_pixels, processor_size, family.grid)
    for split in ("train.json", "val.json"):
        if not (data_dir / split).is_file():
            continue
        records = read_split(data_dir / split)
        for record in records:
            sizes = []
            for path in record.get("images", []):
                with Image.open(data_dir / path) as image:  # header only
                    sizes.append(llamafactory_image_size(*image.size, *budget))
            record["messages"] = messages_to_model(record["messages"], family.grounding, one_frame(sizes))
        atomic_write_text(out / split, json.dumps(records, ensure_ascii=False))
    log.info("%s writes boxes in pixels: %s holds the splits with its boxes", family.name, out)
    return out


def refuse_native_scoring(recipe: Recipe) -> None:
    """A clinical ``metric_for_best_model`` is the native engine's: stop before anything starts."""
    if recipe.metric_for_best_model != "eval_loss":
        raise RecipeError(
            f"metric_for_best_model={recipe.metric_for_best_model} needs the native engine: LLaMA-Factory "
            "has no hook to generate and score descriptions at each evaluation; use --engine native or "
            "metric_for_best_model=eval_loss"
        )


def train_config(
    recipe: Recipe,
    family: Family,
    cli: Path | None = None,
    resume_from: Path | None = None,
    splits_dir: Path | None = None,
) -> dict:
    """The recipe as ``llamafactory-cli train`` arguments (the original train.sh, as YAML), with the
    chat template of the base's ``family``; ``splits_dir`` holds the split files when they are not the
    prepared folder's (:func:`family_data`), whose images LLaMA-Factory still reads."""
    refuse_native_scoring(recipe)
    data_dir, run_dir = training_folders(recipe)
    train_set, val_set = dataset_names(data_dir)
    settings = recipe.to_dict()
    config: dict = {"stage": "sft", "do_train": True, "template": family.llamafactory_template}
    config.update({key: settings[key] for key in SAME_NAME})
    # Local folders as absolute paths: the YAML can then be rerun from any folder.
    for key in ("model_name_or_path", "dataset_dir"):
        if Path(config[key]).exists():
            config[key] = str(Path(config[key]).resolve())
    if splits_dir is not None and splits_dir != data_dir:
        config["media_dir"], config["dataset_dir"] = config["dataset_dir"], str(splits_dir.resolve())
    config["finetuning_type"] = "full" if recipe.finetuning_type == "full" else "lora"
    if recipe.finetuning_type == "qlora":
        config["quantization_bit"] = 4  # LLaMA-Factory's QLoRA: LoRA on a 4-bit bitsandbytes base
    config["dataset"] = train_set
    if recipe.max_samples is not None:
        config["max_samples"] = recipe.max_samples
    config["output_dir"] = str((run_dir / OUTPUT_SUBDIR).resolve())
    config["overwrite_output_dir"] = resume_from is None
    if resume_from is not None:
        config["resume_from_checkpoint"] = str(resume_from)
    config["bf16"] = use_bf16(recipe)
    config["disable_gradient_checkpointing"] = not recipe.gradient_checkpointing
    config["flash_attn"] = FLASH_ATTN[recipe.attn_implementation]
    liger = recipe.use_liger_kernel
    if liger == "auto":  # asked of LLaMA-Factory's environment: that is where the kernels would run
        liger = cli is not None and has_module(cli, "liger_kernel")
    config["enable_liger_kernel"] = bool(liger)
    config["save_strategy"] = "steps"
    if val_set is not None:
        config.update(
            eval_dataset=val_set,
            eval_strategy="steps",
            eval_steps=recipe.eval_steps or recipe.save_steps,
        )
    if recipe.deepspeed:
        config["deepspeed"] = str(Path(recipe.deepspeed).resolve())
    if recipe.fsdp:
        config["fsdp"] = recipe.fsdp
    config["plot_loss"] = True
    return config


def _last_checkpoint(output: Path) -> Path | None:
    found = [p for p in output.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def convert_log(trainer_log: Path, out: Path) -> list[dict]:
    """LLaMA-Factory's ``trainer_log.jsonl`` as ctscribe's ``train_log.jsonl`` (same keys as native)."""
    rows = []
    if trainer_log.exists():
        for line in trainer_log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            row = {"step": entry["current_steps"]}
            if "loss" in entry:
                row.update(loss=entry["loss"], learning_rate=entry.get("lr"))
            if "eval_loss" in entry:
                row["eval_loss"] = entry["eval_loss"]
            if len(row) > 1:  # its closing line carries the step count only
                rows.append(row)
    write_log(out, rows)
    return rows


def _stage(output: Path, staging: Path) -> None:
    """Copy the final adapter (or model) and processor files out of LLaMA-Factory's output_dir."""
    for path in output.iterdir():
        if path.is_file() and path.name not in LOG_FILES and not path.name.endswith(".png"):
            shutil.copy2(path, staging / path.name)


def train(recipe: Recipe, resume: bool = False, cli: str | os.PathLike | None = None) -> Path:
    """Run ``llamafactory-cli train`` on the recipe; returns the adapter (or full model) folder."""
    refuse_native_scoring(recipe)
    executable = find_cli(cli)
    data_dir, run_dir = training_folders(recipe)
    check_data_budget(recipe.image_max_pixels, data_dir)
    family = family_for(recipe.model_name_or_path)  # an unsupported base is refused before anything runs
    output = run_dir / OUTPUT_SUBDIR
    resume_from = None
    if claim_run_dir(recipe, resume, started=output.exists()):
        resume_from = _last_checkpoint(output)
        log.info("resuming from %s", resume_from or "the start (no checkpoint was saved)")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_recipe(run_dir, recipe)
    splits_dir = family_data(recipe, family)
    config = write_config(
        run_dir / "llamafactory_train.yaml", train_config(recipe, family, executable, resume_from, splits_dir)
    )
    run_cli(executable, "train", config, run_dir / "llamafactory.log")

    final = final_folder(run_dir, recipe)
    staging = staging_folder(final)
    _stage(output, staging)
    record_settings(staging, training_settings(recipe.image_max_pixels, recipe.image_min_pixels, data_dir))
    publish(staging, final)
    rows = convert_log(output / "trainer_log.jsonl", run_dir / TRAIN_LOG)
    plot_loss(run_dir / TRAIN_LOG, run_dir / LOSS_PLOT)
    state_path = output / "trainer_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    results_path = output / "train_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    evals = [row["eval_loss"] for row in rows if "eval_loss" in row]
    RunSummary(
        engine="llamafactory",
        final=final.name,
        global_step=state.get("global_step"),
        train_loss=results.get("train_loss"),
        best_checkpoint=None,  # LLaMA-Factory keeps checkpoints in llamafactory/ and names no best one
        best_eval_loss=min(evals) if evals else None,
        train_samples_per_second=results.get("train_samples_per_second"),
        train_runtime=results.get("train_runtime"),
        feature_cache_seconds=None,  # no vision-feature cache in LLaMA-Factory
    ).write(run_dir)
    return final
