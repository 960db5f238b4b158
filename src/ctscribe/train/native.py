"""The native training engine: transformers' Trainer + PEFT + accelerate, as one readable flow.

    recipe -> model (build_model) -> data (SFTDataset) -> Trainer -> RUN_DIR

The Trainer brings gradient accumulation, evaluation, checkpoints with optimizer, scheduler, RNG
and data position (so a resumed run repeats an uninterrupted one), and multi-GPU through
accelerate/torchrun with DeepSpeed or FSDP. ctscribe adds what Qwen2-VL fine-tuning needs on top:
the loss mask and length checks (``train.data``), checkpoints that count only once complete, a
``train_log.jsonl`` and ``loss.png``.

RUN_DIR after a run::

    recipe.yaml            the resolved recipe
    adapter/ (or model/)   the PEFT adapter (LoRA, QLoRA) or the full model, with the processor and
                           the settings it carries (ctscribe.model_settings: pixel budget, prompts)
    train_log.jsonl        one object per logged step: step, loss, learning_rate, samples_per_s, eval_loss
    loss.png               training (and validation) loss
    run_summary.json       final step and loss, the best checkpoint by validation loss
    data_stats.json        samples used and dropped, by reason
    tensorboard/           TensorBoard event files
    checkpoint-N/          the last checkpoints, and the best by validation loss (kept by rotation)
    feature_cache/         vision features of every image, when the tower is frozen (train.feature_cache)
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ctscribe.data.images import ImageOptions
from ctscribe.model_settings import (
    check_data_budget,
    record_settings,
    set_processor_budget,
    training_settings,
)
from ctscribe.recipe import Recipe, RecipeError
from ctscribe.train.data import SFTDataset, collate
from ctscribe.train.feature_cache import (
    FeatureCache,
    build_feature_cache,
    cache_bytes,
    cache_size_refusal,
    cache_wanted,
    free_bytes,
)
from ctscribe.train.loss import labelled_only_loss, liger_active
from ctscribe.train.model import build_model, use_bf16
from ctscribe.train.model_inputs import model_inputs, qwen_core

log = logging.getLogger(__name__)
COMPLETE_MARKER = "checkpoint_complete.json"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose writing finished, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoints a killed run left half-written; they must never be resumed from."""
    removed = []
    for path in run_dir.glob("checkpoint-*"):
        if path.is_dir() and not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


class EpochSeededSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends only on (seed, epoch).

    The Trainer's default RandomSampler draws from the global RNG, whose state differs after a
    resume, and accelerate replaces it with another sampler only when there are several processes.
    This order is the same in a resumed run and for any number of processes (accelerate hands each
    process every N-th batch of it), so those runs repeat a single uninterrupted one.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class LengthGroupedSampler(EpochSeededSampler):
    """The seeded shuffle, then each run of ``group`` indices sorted longest first.

    Neighbouring indices become batches, so batches hold samples of similar length and pad less
    (transformers' ``group_by_length`` does the same from the global RNG; this one keeps the order a
    function of (seed, epoch) only, so resumed and multi-process runs still repeat a single one).
    """

    def __init__(self, lengths: Sequence[int], group: int, seed: int) -> None:
        super().__init__(len(lengths), seed)
        self.lengths, self.group = np.asarray(lengths), group

    def __iter__(self):
        order = np.fromiter(super().__iter__(), dtype=np.int64, count=self.size)
        # Sort by (group, longest first); lexsort is stable, so equal lengths keep the shuffled order.
        ranked = order[np.lexsort((-self.lengths[order], np.arange(self.size) // self.group))]
        return iter(ranked.tolist())


# Batches per length-sorted group: as in transformers' LengthGroupedSampler ("megabatch" of 50).
LENGTH_GROUP_BATCHES = 50


class CtscribeTrainer(Trainer):
    """A Trainer with a reproducible data order, checkpoints that count only once complete, and the
    speed-ups of docs/TRAINING.md "Speed" (length-grouped batches, packed rows, cached vision
    features, the LM head only at labelled positions).

    The Trainer writes a checkpoint folder file by file; a process killed midway leaves a folder
    that looks like a checkpoint. The marker, written last, is what `--resume` looks for.
    """

    def __init__(self, *args, labelled_only: bool = False, group_by_length: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.labelled_only, self.group_by_length = labelled_only, group_by_length

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed or self.args.seed
        if self.group_by_length:
            group = self.args.per_device_train_batch_size * self.args.world_size * LENGTH_GROUP_BATCHES
            return LengthGroupedSampler(dataset.lengths, group, seed)
        return EpochSeededSampler(len(dataset), seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Packed rows and cached features become forward arguments; then the model's loss, or the
        same loss with logits only at labelled positions."""
        inputs = model_inputs(qwen_core(self.accelerator.unwrap_model(model)), inputs)
        if not self.labelled_only:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = labelled_only_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # As Trainer.compute_loss: the token count spans all processes, and DDP averages gradients.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / COMPLETE_MARKER).write_text(json.dumps({"step": self.state.global_step}))


class JsonlLogger(TrainerCallback):
    """``train_log.jsonl``: one line per logged step, its validation loss on the same line."""

    def __init__(self, path: Path, samples_per_step: int) -> None:
        self.path = path
        self.samples_per_step = samples_per_step
        self.pending: dict | None = None
        self.last = (0, time.perf_counter())

    def _flush(self) -> None:
        if self.pending is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(self.pending) + "\n")
            self.pending = None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.last = (state.global_step, time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if not state.is_world_process_zero or not logs:
            return
        step = state.global_step
        if "loss" in logs:
            self._flush()
            last_step, last_time = self.last
            elapsed = time.perf_counter() - last_time
            samples = (step - last_step) * self.samples_per_step
            self.last = (step, time.perf_counter())
            self.pending = {
                "step": step,
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "samples_per_s": round(samples / elapsed, 3) if elapsed > 0 else None,
            }
        elif "eval_loss" in logs:
            if self.pending is None or self.pending["step"] != step:
                self._flush()
                self.pending = {"step": step}
            self.pending["eval_loss"] = logs["eval_loss"]
            self._flush()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            self._flush()


def truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines of steps after the checkpoint: the resumed run logs them again."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in lines))


def plot_loss(log_path: Path, png: Path) -> None:
    """``loss.png``: training loss per logged step, validation loss where evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    figure, axes = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    plt.close(figure)


def _warmup(ratio: float) -> dict:
    """Recent transformers read a float ``warmup_steps`` as a ratio and dropped ``warmup_ratio``."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def training_arguments(recipe: Recipe, run_dir: Path, evaluate: bool) -> TrainingArguments:
    """The recipe in the Trainer's terms."""
    eval_steps = recipe.eval_steps or recipe.save_steps
    if evaluate and recipe.save_steps % eval_steps:
        raise RecipeError(
            f"save_steps ({recipe.save_steps}) must be a multiple of eval_steps ({eval_steps}) "
            "to keep the best checkpoint"
        )
    return TrainingArguments(
        output_dir=str(run_dir),
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.num_train_epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        per_device_eval_batch_size=recipe.per_device_eval_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        lr_scheduler_type=recipe.lr_scheduler_type,
        **_warmup(recipe.warmup_ratio),
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        bf16=use_bf16(recipe),
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=recipe.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_steps if evaluate else None,
        # The best checkpoint is kept (rotation spares it) and named in run_summary.json. Loading it
        # back at the end is left off: transformers 5.24 saves Qwen2-VL under converted key names
        # and then fails to load them, silently keeping the last weights.
        load_best_model_at_end=False,
        metric_for_best_model="eval_loss" if evaluate else None,
        greater_is_better=False if evaluate else None,
        seed=recipe.seed,
        data_seed=recipe.seed,
        dataloader_num_workers=recipe.dataloader_num_workers,
        report_to=[],  # TensorBoard is attached in train(), writing to RUN_DIR/tensorboard on any version
        gradient_checkpointing=recipe.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
        remove_unused_columns=False,  # pixel_values and image_grid_thw are not in the model's signature
        deepspeed=recipe.deepspeed,
        fsdp=recipe.fsdp,
        use_liger_kernel=liger_active(recipe),
        prediction_loss_only=True,  # evaluation reports eval_loss only; logits would only cost memory
        ddp_find_unused_parameters=False,
        # Without a GPU, transformers sets up torchrun's processes as a gloo process group only when
        # told it runs on the CPU; otherwise each process would silently train on its own.
        use_cpu=not torch.cuda.is_available(),
    )


def claim_run_dir(recipe: Recipe, resume: bool, started: bool) -> bool:
    """Whether to resume the run in ``output_dir``; refuses to mix two runs in one folder.

    A folder holding a ``started`` run is trained into again only with ``--resume`` and the recipe
    it was started with: anything else would overwrite or blend two runs. Both engines use this.
    """
    run_dir = Path(recipe.output_dir)
    if not started:
        return False
    if not resume:
        raise RecipeError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose a new --out"
        )
    saved = run_dir / "recipe.yaml"
    if saved.exists() and saved.read_text() != recipe.to_yaml():
        raise RecipeError(
            f"{run_dir} was trained with another recipe; resume with the same recipe and options"
        )
    return True


def training_image_options(recipe: Recipe) -> ImageOptions:
    """Prepared images are already cleaned and cropped: in training the one image path only decodes
    them and fits them to the recipe's budget (a no-op when it equals prepare's)."""
    return ImageOptions(
        max_pixels=recipe.image_max_pixels,
        min_pixels=recipe.image_min_pixels,
        roi_box="keep",
        crop_background=False,
    )


def feature_cache_within_bound(
    recipe: Recipe,
    args: TrainingArguments,
    model,
    processor,
    image_options: ImageOptions,
    splits: list[SFTDataset],
) -> FeatureCache | None:
    """The vision-feature cache of the splits' images, or None when its estimated size is over
    ``vision_feature_cache_max_gb`` or the free disk (then training reads pixels, and says why)."""
    root = Path(recipe.vision_feature_cache_dir or Path(args.output_dir) / "feature_cache")
    hidden = qwen_core(model).config.text_config.hidden_size
    estimate = cache_bytes(sum(split.image_tokens() for split in splits), hidden)
    free = free_bytes(root)
    refusal = cache_size_refusal(estimate, recipe.vision_feature_cache_max_gb, free)
    size = (
        f"estimated {estimate / 1e9:.2f} GB for {sum(len(split) for split in splits)} samples "
        f"(image tokens x hidden {hidden} x 2 B), bound vision_feature_cache_max_gb="
        f"{recipe.vision_feature_cache_max_gb}, {free / 1e9:.1f} GB free at {root}"
    )
    if refusal:
        log.warning("vision-feature cache off (%s): %s; training reads pixels instead", refusal, size)
        return None
    log.info("vision-feature cache: %s", size)
    paths = [path for split in splits for path in split.image_paths()]
    with args.main_process_first(desc="vision-feature cache"):  # one process builds, the rest read
        return build_feature_cache(
            root, qwen_core(model).visual, processor.image_processor, image_options, paths
        )


def train(recipe: Recipe, resume: bool = False, callbacks: tuple[TrainerCallback, ...] = ()) -> Path:
    """Train as the recipe says; returns the folder of the adapter (or full model)."""
    from transformers import AutoProcessor

    if not recipe.dataset_dir or not recipe.output_dir:
        raise RecipeError("the recipe needs dataset_dir (--data) and output_dir (--out)")
    data_dir, run_dir = Path(recipe.dataset_dir), Path(recipe.output_dir)
    check_data_budget(recipe.image_max_pixels, data_dir)
    checkpoint = None
    if claim_run_dir(recipe, resume, started=any(run_dir.glob("checkpoint-*"))):
        removed = remove_incomplete_checkpoints(run_dir)
        if removed:
            log.warning("removed half-written checkpoint(s): %s", ", ".join(removed))
        done = complete_checkpoints(run_dir)
        checkpoint = str(done[-1]) if done else None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    log_path = run_dir / "train_log.jsonl"
    if checkpoint is None:
        log_path.unlink(missing_ok=True)
    else:
        truncate_log(log_path, int(Path(checkpoint).name.split("-")[1]))
        log.info("resuming from %s", checkpoint)

    processor = AutoProcessor.from_pretrained(recipe.model_name_or_path)
    set_processor_budget(processor, recipe.image_max_pixels, recipe.image_min_pixels)  # saved with the model
    image_options = training_image_options(recipe)

    def dataset(split: str) -> SFTDataset | None:
        path = data_dir / f"{split}.json"
        if split != "train" and not path.exists():
            return None
        return SFTDataset.from_split(
            path,
            processor.tokenizer,
            processor.image_processor,
            image_options,
            recipe.cutoff_len,
            recipe.max_samples,
        )

    train_set, eval_set = dataset("train"), dataset("val")
    if eval_set is not None and len(eval_set) == 0:
        eval_set = None
    if len(train_set) == 0:
        raise RecipeError(
            f"no usable training samples in {data_dir / 'train.json'}: {dict(train_set.dropped)}"
        )
    stats = {
        "train": len(train_set),
        "train_dropped": dict(train_set.dropped),
        "val": len(eval_set) if eval_set else 0,
        "val_dropped": dict(eval_set.dropped) if eval_set else {},
    }
    (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2))
    if train_set.dropped:
        log.warning(
            "dropped %d training sample(s): %s", sum(train_set.dropped.values()), dict(train_set.dropped)
        )

    args = training_arguments(recipe, run_dir, evaluate=eval_set is not None)
    set_seed(recipe.seed)  # LoRA's random init happens here, before the Trainer seeds anything
    model = build_model(recipe)
    cache_seconds = 0.0
    if cache_wanted(recipe):
        started = time.perf_counter()
        splits = [split for split in (train_set, eval_set) if split is not None]
        cache = feature_cache_within_bound(recipe, args, model, processor, image_options, splits)
        for split in splits:
            split.features = cache
        cache_seconds = time.perf_counter() - started
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    loggers: list[TrainerCallback] = [JsonlLogger(log_path, samples_per_step)]
    if recipe.report_to == "tensorboard" and args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        loggers.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
    trainer = CtscribeTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=functools.partial(
            collate, tokens=train_set.tokens, pack_to=recipe.cutoff_len if recipe.packing else None
        ),
        callbacks=[*loggers, *callbacks],
        # Liger's patched forward already computes the loss without logits; otherwise skip most of them.
        labelled_only=recipe.loss_on_labelled_only and not liger_active(recipe),
        group_by_length=recipe.group_by_length,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)

    final = run_dir / ("model" if recipe.finetuning_type == "full" else "adapter")
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(final))
        record_settings(final, training_settings(recipe.image_max_pixels, recipe.image_min_pixels, data_dir))
        plot_loss(log_path, run_dir / "loss.png")
        best = trainer.state.best_model_checkpoint
        summary = {
            "final": final.name,
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "best_checkpoint": Path(best).name if best else None,
            "best_eval_loss": trainer.state.best_metric,
            # transformers' own measure (samples over the train loop's time), as LLaMA-Factory reports it
            "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            "train_runtime": result.metrics.get("train_runtime"),
            "feature_cache_seconds": round(cache_seconds, 3),  # building (or reusing) it, before the loop
        }
        (run_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
    return final
