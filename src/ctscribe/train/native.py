"""The native training engine: transformers' Trainer + PEFT + accelerate, as one recipe class.

    recipe -> run folder -> data (SFTDataset) -> model (build_model) -> feature cache -> Trainer -> RUN_DIR

(``NativeTrainingRecipe.setup`` says why in that order.) The Trainer brings gradient accumulation,
evaluation, checkpoints with optimizer, scheduler, RNG and data position (so a resumed run repeats an
uninterrupted one), and multi-GPU through accelerate/torchrun with DeepSpeed or FSDP. ctscribe adds
what vision-language fine-tuning needs on top: the loss mask and length checks (``train.data``),
checkpoints that count only once complete, a ``train_log.jsonl`` and ``loss.png``.

RUN_DIR after a run holds the files of ``ctscribe.run_folder`` (recipe.yaml, data_stats.json,
train_log.jsonl, loss.png, run_summary.json, checkpoint-N/ with their completion markers, adapter/
or model/), and two of this engine's own::

    tensorboard/           TensorBoard event files
    feature_cache/         vision features of every image, when the tower is frozen (train.feature_cache)
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from ctscribe.ct.images import ImageOptions
from ctscribe.model_settings import (
    check_data_budget,
    record_settings,
    set_processor_budget,
    training_settings,
)
from ctscribe.models import Family, family_for
from ctscribe.recipe import (
    CLINICAL_METRICS,
    Recipe,
    RecipeError,
    parameter_sharding,
    training_folders,
    validate,
)
from ctscribe.run_folder import (
    LOSS_PLOT,
    TRAIN_LOG,
    RunSummary,
    append_log,
    checkpoint_step,
    claim_run_dir,
    complete_checkpoints,
    final_folder,
    mark_checkpoint_complete,
    plot_loss,
    publish,
    remove_incomplete_checkpoints,
    staging_folder,
    truncate_log,
    write_data_stats,
    write_recipe,
)
from ctscribe.train.checkpoint_metric import ValidationScorer
from ctscribe.train.family_limits import apply_family_limits
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
from ctscribe.train.model_inputs import model_inputs
from ctscribe.train.samples import SFTDataset, collate

log = logging.getLogger(__name__)


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

    def __init__(
        self,
        *args,
        family: Family,
        labelled_only: bool = False,
        group_by_length: bool = False,
        scorer: ValidationScorer | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.family = family
        self.labelled_only, self.group_by_length, self.scorer = labelled_only, group_by_length, scorer

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        """The validation loss and, with a scorer, the clinical scores of the validation subset's
        descriptions (``eval_region_acc``, …): logged before the loss, so train_log.jsonl writes them on
        the loss's line, and returned with it, so the best checkpoint can follow any of them."""
        scores = {}
        if self.scorer is not None:
            scores = {f"eval_{name}": value for name, value in self.scorer(self.model).items()}
            self.log(scores)
        metrics = super().evaluate(*args, **kwargs)
        return {**metrics, **scores}

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
        inputs = model_inputs(self.family, self.family.core(self.accelerator.unwrap_model(model)), inputs)
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
            mark_checkpoint_complete(folder, self.state.global_step)


class JsonlLogger(TrainerCallback):
    """``train_log.jsonl``: one line per logged step, its validation loss and scores on the same line."""

    def __init__(self, path: Path, samples_per_step: int) -> None:
        self.path = path
        self.samples_per_step = samples_per_step
        self.pending: dict | None = None
        self.last = (0, time.perf_counter())

    def _flush(self) -> None:
        if self.pending is not None:
            append_log(self.path, self.pending)
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
        elif any(key.startswith("eval_") for key in logs):
            if self.pending is None or self.pending["step"] != step:
                self._flush()
                self.pending = {"step": step}
            # The loss and the clinical scores, not the timings; the loss comes last and ends the line.
            self.pending.update({key: logs[key] for key in logs if key in EVAL_LOG_KEYS})
            if "eval_loss" in logs:
                self._flush()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            self._flush()


EVAL_LOG_KEYS = ("eval_loss", *(f"eval_{name}" for name in CLINICAL_METRICS))


def _has_argument(name: str) -> bool:
    """Whether this transformers' ``TrainingArguments`` has a field ``name`` (the range pyproject
    allows spans renames)."""
    import dataclasses

    return name in {f.name for f in dataclasses.fields(TrainingArguments)}


def _warmup(ratio: float) -> dict:
    """Recent transformers read a float ``warmup_steps`` as a ratio and dropped ``warmup_ratio``."""
    return {"warmup_ratio": ratio} if _has_argument("warmup_ratio") else {"warmup_steps": ratio}


def _checkpointing(enabled: bool) -> dict:
    """The recipe's ``gradient_checkpointing`` under the name this transformers reads: 5.24 calls it
    ``activation_checkpointing`` (the old name still works but warns, a FutureWarning on every run);
    5.19, vLLM's environment, has only the old name."""
    prefix = "activation" if _has_argument("activation_checkpointing") else "gradient"
    kwargs = {"use_reentrant": False} if enabled else None
    return {f"{prefix}_checkpointing": enabled, f"{prefix}_checkpointing_kwargs": kwargs}


def training_arguments(recipe: Recipe, run_dir: Path, evaluate: bool) -> TrainingArguments:
    """The recipe in the Trainer's terms (recipe validation already checked that eval_steps divides
    save_steps, which keeping the best checkpoint needs)."""
    eval_steps = recipe.eval_steps or recipe.save_steps
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
        # back at the end is left off: transformers 5.24 saves the model under converted key names
        # and then fails to load them, silently keeping the last weights.
        load_best_model_at_end=False,
        metric_for_best_model=recipe.metric_for_best_model if evaluate else None,
        greater_is_better=recipe.metric_for_best_model in CLINICAL_METRICS if evaluate else None,
        seed=recipe.seed,
        data_seed=recipe.seed,
        dataloader_num_workers=recipe.dataloader_num_workers,
        report_to=[],  # TensorBoard is attached in train(), writing to RUN_DIR/tensorboard on any version
        **_checkpointing(recipe.gradient_checkpointing),
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
    family: Family,
    model,
    processor,
    image_options: ImageOptions,
    splits: list[SFTDataset],
) -> FeatureCache | None:
    """The vision-feature cache of the splits' images, or None when its estimated size is over
    ``vision_feature_cache_max_gb`` or the free disk (then training reads pixels, and says why)."""
    root = Path(recipe.vision_feature_cache_dir or Path(args.output_dir) / "feature_cache")
    hidden = family.core(model).config.text_config.hidden_size
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
            root, family, family.vision_tower(model), processor.image_processor, image_options, paths
        )


class NativeTrainingRecipe:
    """One training run as a recipe, in the style of torchtune's recipes: ``setup()`` then ``train()``.

    Features, with what each costs (docs/TRAINING.md says more):

    - LoRA, QLoRA (4-bit base, CUDA only) or full fine-tuning, the vision tower and projector frozen
      or trained (``train.model``).
    - Resume: ``--resume`` continues from the last *complete* checkpoint with optimizer, scheduler,
      RNG and data position, so the resumed run repeats the uninterrupted one; a half-written
      checkpoint is deleted first. It needs the recipe the run started with.
    - Effective batch = processes x ``per_device_train_batch_size`` x ``gradient_accumulation_steps``;
      the data order is a function of (seed, epoch) only (``EpochSeededSampler``).
    - Gradient checkpointing (on by default): recomputes activations in the backward pass, trading
      speed for memory (measured in docs/BENCHMARKS.md, "Gradient checkpointing").
    - Speed switches that never change what is computed: vision-feature cache (costs disk and one
      pass of the tower before the loop; off where the tower trains, and refused with FSDP/ZeRO-3),
      packing, length grouping, the LM head only at labelled positions.
    - Several processes through torchrun/accelerate, DeepSpeed or FSDP (the Trainer's own).

    Every check that needs only the recipe ran in :func:`ctscribe.recipe.validate` before this class
    touches data or a model; the ones here need the data folder or the run folder.
    """

    def __init__(self, recipe: Recipe, resume: bool = False, callbacks: tuple[TrainerCallback, ...] = ()):
        validate(recipe)  # again: code may build a Recipe directly (dataclasses.replace skips checks)
        self.recipe, self.resume, self.callbacks = recipe, resume, callbacks
        self.data_dir, self.run_dir = training_folders(recipe)
        self.log_path = self.run_dir / TRAIN_LOG
        self.checkpoint: str | None = None
        self.feature_cache_seconds = 0.0

    def setup(self) -> None:
        """Everything before the first step, cheapest and most likely to fail first."""
        # The run folder first: refusing to mix two runs costs nothing, and resuming decides which
        # checkpoint the trainer restores.
        self._setup_run_dir()
        # Data before the model: a split without one usable sample fails before the model takes its
        # memory, and the Trainer's arguments (which the cache step uses too) depend on whether there
        # is a validation split.
        self._setup_data()
        # The model after the seed is set: LoRA's random init happens in build_model.
        self._setup_model()
        # The cache needs both: the datasets name the images, the model's vision tower computes their
        # features. It must be attached to the datasets before the trainer reads a sample.
        self._setup_feature_cache()
        self._setup_trainer()

    def _setup_run_dir(self) -> None:
        # The data's pixel budget against the recipe's, and the base's family: read from the data
        # folder's stats.json and the base's config.json, so both fail before the run folder is touched
        # (a checkpoint of no supported family is refused before anything of it loads).
        check_data_budget(self.recipe.image_max_pixels, self.data_dir)
        self.family = family_for(self.recipe.model_name_or_path)
        self.recipe = apply_family_limits(self.recipe, self.family)
        if claim_run_dir(self.recipe, self.resume, started=any(self.run_dir.glob("checkpoint-*"))):
            removed = remove_incomplete_checkpoints(self.run_dir)
            if removed:
                log.warning("removed half-written checkpoint(s): %s", ", ".join(removed))
            done = complete_checkpoints(self.run_dir)
            self.checkpoint = str(done[-1]) if done else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(self.run_dir, self.recipe)
        if self.checkpoint is None:
            self.log_path.unlink(missing_ok=True)
        else:
            truncate_log(self.log_path, checkpoint_step(Path(self.checkpoint)))
            log.info("resuming from %s", self.checkpoint)

    def _dataset(self, split: str) -> SFTDataset | None:
        path = self.data_dir / f"{split}.json"
        if split != "train" and not path.exists():
            return None
        return SFTDataset.from_split(
            path,
            self.processor.tokenizer,
            self.processor.image_processor,
            self.image_options,
            self.recipe.cutoff_len,
            self.family,
            self.recipe.max_samples,
        )

    def _setup_data(self) -> None:
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.recipe.model_name_or_path)
        # The budget is saved with the model (ctscribe.model_settings), so inference uses it too.
        set_processor_budget(self.processor, self.recipe.image_max_pixels, self.recipe.image_min_pixels)
        self.image_options = training_image_options(self.recipe)
        self.train_set, self.eval_set = self._dataset("train"), self._dataset("val")
        if self.eval_set is not None and len(self.eval_set) == 0:
            self.eval_set = None
        if self.recipe.metric_for_best_model in CLINICAL_METRICS and self.eval_set is None:
            raise RecipeError(
                f"metric_for_best_model={self.recipe.metric_for_best_model} scores descriptions of the "
                f"validation split, and {self.data_dir / 'val.json'} has no usable sample; prepare one "
                "or use eval_loss"
            )
        if len(self.train_set) == 0:
            dropped = dict(self.train_set.dropped)
            raise RecipeError(f"no usable training samples in {self.data_dir / 'train.json'}: {dropped}")
        stats = {
            "train": len(self.train_set),
            "train_dropped": dict(self.train_set.dropped),
            "val": len(self.eval_set) if self.eval_set else 0,
            "val_dropped": dict(self.eval_set.dropped) if self.eval_set else {},
        }
        write_data_stats(self.run_dir, stats)
        if self.train_set.dropped:
            dropped = dict(self.train_set.dropped)
            log.warning("dropped %d training sample(s): %s", sum(dropped.values()), dropped)
        # Made here, once the validation split is known (see setup()).
        self.args = training_arguments(self.recipe, self.run_dir, evaluate=self.eval_set is not None)

    def _setup_model(self) -> None:
        set_seed(self.recipe.seed)  # LoRA's random init happens here, before the Trainer seeds anything
        self.model = build_model(self.recipe, self.family)

    def _setup_feature_cache(self) -> None:
        """Attach the vision-feature cache to the datasets (their samples then carry features, not
        pixels), or leave them reading pixels when it is off or over its size bound."""
        if not cache_wanted(self.recipe):
            if self.recipe.cache_vision_features == "auto" and parameter_sharding(self.recipe):
                log.info(
                    "vision-feature cache off: %s shards the vision tower", parameter_sharding(self.recipe)
                )
            return
        started = time.perf_counter()
        splits = [split for split in (self.train_set, self.eval_set) if split is not None]
        cache = feature_cache_within_bound(
            self.recipe, self.args, self.family, self.model, self.processor, self.image_options, splits
        )
        for split in splits:
            split.features = cache
        self.feature_cache_seconds = time.perf_counter() - started

    def _setup_trainer(self) -> None:
        args, recipe = self.args, self.recipe
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        loggers: list[TrainerCallback] = [JsonlLogger(self.log_path, per_step)]
        if recipe.report_to == "tensorboard" and args.process_index == 0:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            loggers.append(TensorBoardCallback(tb_writer=writer))
        scorer = None
        if recipe.metric_for_best_model in CLINICAL_METRICS:
            scorer = ValidationScorer(
                self.data_dir / "val.json",
                recipe.generation_eval_samples,
                self.processor,
                self.image_options,
                args.per_device_eval_batch_size,
            )
        self.trainer = CtscribeTrainer(
            model=self.model,
            args=args,
            train_dataset=self.train_set,
            eval_dataset=self.eval_set,
            data_collator=functools.partial(
                collate,
                tokens=self.train_set.tokens,
                pack_to=recipe.cutoff_len if recipe.packing is not False else None,
                token_types=self.train_set.token_types,
            ),
            family=self.family,
            callbacks=[*loggers, *self.callbacks],
            # Liger's patched forward already computes the loss without logits; otherwise skip most of them.
            labelled_only=recipe.loss_on_labelled_only and not liger_active(recipe),
            group_by_length=recipe.group_by_length,
            scorer=scorer,
        )

    def train(self) -> Path:
        """The training loop, then the final adapter (or model) and the run folder's records."""
        result = self.trainer.train(resume_from_checkpoint=self.checkpoint)
        recipe, trainer = self.recipe, self.trainer
        final = final_folder(self.run_dir, recipe)
        staging = final.with_name(final.name + ".partial")
        if trainer.is_world_process_zero():
            staging_folder(final)
        trainer.accelerator.wait_for_everyone()  # every process saves (sharded weights are gathered)
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            self.processor.save_pretrained(str(staging))
            settings = training_settings(recipe.image_max_pixels, recipe.image_min_pixels, self.data_dir)
            record_settings(staging, settings)
            publish(staging, final)
            plot_loss(self.log_path, self.run_dir / LOSS_PLOT)
            best = trainer.state.best_model_checkpoint
            losses = [row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row]
            RunSummary(
                engine="native",
                final=final.name,
                global_step=trainer.state.global_step,
                train_loss=result.training_loss,
                best_checkpoint=Path(best).name if best else None,
                best_eval_loss=min(losses) if losses else None,
                train_samples_per_second=result.metrics.get("train_samples_per_second"),
                train_runtime=result.metrics.get("train_runtime"),
                feature_cache_seconds=round(self.feature_cache_seconds, 3),
                best_metric=recipe.metric_for_best_model if best else None,
                best_score=trainer.state.best_metric if best else None,
            ).write(self.run_dir)
        return final


def train(recipe: Recipe, resume: bool = False, callbacks: tuple[TrainerCallback, ...] = ()) -> Path:
    """Train as the recipe says; returns the folder of the adapter (or full model)."""
    run = NativeTrainingRecipe(recipe, resume, callbacks)
    run.setup()
    return run.train()
