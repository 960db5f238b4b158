"""The `ctscribe` command: one sub-command per pipeline step.

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so that
`ctscribe --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ctscribe import __version__
from ctscribe.ct.options import ImageOptions, InputOptions
from ctscribe.evaluate.options import ENTITY_METRICS, ENTITY_MODELS, EvaluateOptions
from ctscribe.fixtures.options import (
    FAMILY_NAMES,
    MODEL_SIZES,
    DemoOptions,
    PhantomOptions,
    PhantomSeriesOptions,
    TinyModelOptions,
)
from ctscribe.generate.backends import Backend
from ctscribe.generate.options import GenerateOptions
from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.prepare.options import FinalizeOptions, ReadOptions, StageOptions, TranslateOptions
from ctscribe.serve.options import ServeOptions
from ctscribe.study.options import StudyOptions
from ctscribe.train.options import ExportOptions, TrainOptions

app = typer.Typer(
    help="Fine-tune a Qwen vision-language model on MedTrinity-25M CT images and describe CT images to "
    "assist clinicians.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
fixtures_app = typer.Typer(
    help="Build the offline fixtures that the demo and the tests run on (no downloads).",
    no_args_is_help=True,
)
app.add_typer(fixtures_app, name="fixtures")


class Layout(StrEnum):
    demo = "demo"
    full = "full"


# The choices of `ctscribe fixtures tiny-model`, from the fixtures' options (which name the families).
ModelSize = StrEnum("ModelSize", {name: name for name in MODEL_SIZES})
ModelFamily = StrEnum("ModelFamily", {name: name for name in FAMILY_NAMES})


def option(options: type, name: str, *param_decls: str, **kwargs: Any) -> Any:
    """A typer option with the help of the options dataclass field ``name``.

    Every option with a default is declared as
    ``name: Annotated[T, option(XOptions, "name", ...)] = XOptions.name``: the field owns the default
    and the help, and the CLI only reads them (tests/test_single_owners.py checks each command).
    ``param_decls`` and ``kwargs`` are typer's (flag names, ``min``, ``max``, ...).
    """
    (found,) = (f for f in dataclasses.fields(options) if f.name == name)
    return typer.Option(*param_decls, help=found.metadata["help"], **kwargs)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctscribe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune a Qwen vision-language model on MedTrinity-25M CT images and describe CT images to
    assist clinicians."""


@fixtures_app.command("tiny-model")
def fixtures_tiny_model(
    out: Annotated[Path, typer.Argument(help="New folder to write the model to.")],
    family: Annotated[ModelFamily, option(TinyModelOptions, "family")] = TinyModelOptions.family,
    size: Annotated[ModelSize, option(TinyModelOptions, "size")] = TinyModelOptions.size,
    seed: Annotated[int, option(TinyModelOptions, "seed")] = TinyModelOptions.seed,
) -> None:
    """Build a random-weight vision-language model with its family's real tokenizer, chat template,
    processor settings and file layout.

    The folder loads with the standard transformers calls, e.g.
    `AutoModelForImageTextToText.from_pretrained(OUT)` and `AutoProcessor.from_pretrained(OUT)`.
    """
    from ctscribe.fixtures.families import build_family_model

    path = build_family_model(out, family.value, size.value, seed=seed)
    typer.echo(f"wrote {size.value} {family.value} fixture to {path}")


@fixtures_app.command("phantom")
def fixtures_phantom(
    out: Annotated[Path, typer.Argument(help="New folder to write the data set to.")],
    rows: Annotated[int, option(PhantomOptions, "rows", min=1)] = PhantomOptions.rows,
    seed: Annotated[int, option(PhantomOptions, "seed")] = PhantomOptions.seed,
    rows_per_shard: Annotated[
        int, option(PhantomOptions, "rows_per_shard", min=1)
    ] = PhantomOptions.rows_per_shard,
    layout: Annotated[Layout, option(PhantomOptions, "layout")] = PhantomOptions.layout,
    short_captions: Annotated[bool, option(PhantomOptions, "short_captions")] = PhantomOptions.short_captions,
) -> None:
    """Build a phantom CT data set as parquet shards in MedTrinity-25M's schema (image, id, caption).

    Writes OUT/25M_demo/train-*.parquet, laid out like a download of the Hub's 25M_demo subset (or,
    with --layout full, the full release: OUT/25M_full/metadata.parquet and archives/*.tar.zst, the
    last one truncated and one image missing), and OUT/truth.jsonl with each row's known facts
    (modality, region, lesion, side, size, boxes, and which rows are corrupt, captionless or duplicates).
    """
    from ctscribe.fixtures.phantom import build_phantom, build_phantom_full, read_truth

    if layout is Layout.full:
        build_phantom_full(out, rows=rows, seed=seed)
    else:
        build_phantom(out, rows=rows, seed=seed, rows_per_shard=rows_per_shard, short_captions=short_captions)
    truth = read_truth(out)
    ct = sum(t.modality == "CT" for t in truth)
    typer.echo(f"wrote {len(truth)} phantom rows ({ct} CT) to {out}")


@fixtures_app.command("phantom-series")
def fixtures_phantom_series(
    out: Annotated[Path, typer.Argument(help="New folder to write the series to.")],
    seed: Annotated[int, option(PhantomSeriesOptions, "seed")] = PhantomSeriesOptions.seed,
    slices: Annotated[int, option(PhantomSeriesOptions, "slices", min=12)] = PhantomSeriesOptions.slices,
) -> None:
    """Build phantom CT series with known findings, for `ctscribe study` and its evaluation.

    Writes OUT/dicom/series-1/ (one DICOM file per slice, shuffled names, identifiers in every header),
    OUT/nifti/volume-2.nii.gz, OUT/mixed/ (series 1 without position tags, one slice corrupt, one slice of
    another series) and OUT/truth.json (each lesion's region, abnormality, side, slice range and boxes).
    """
    from ctscribe.fixtures.phantom_series import build_phantom_series

    truth = build_phantom_series(out, seed=seed, slices=slices)
    typer.echo(f"wrote phantom series to {out}; truth in {truth}")


class Modality(StrEnum):
    ct = "ct"
    all = "all"


class RoiBox(StrEnum):
    keep = "keep"
    remove = "remove"


class Lang(StrEnum):
    en = "en"
    zh = "zh"
    both = "both"


def _parse_shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise typer.BadParameter("use I/N, e.g. 0/4 for the first of four shards") from None
    if count < 1 or not 0 <= index < count:
        raise typer.BadParameter(f"{value}: need 0 <= I < N")
    return index, count


def _print_stats(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prepare")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", str(stats["read"]))
    table.add_row("kept", str(stats["kept"]))
    for reason, n in stats["skipped"].items():
        table.add_row(f"skipped: {reason.replace('_', ' ')}", str(n))
    for split, n in stats["splits"].items():
        table.add_row(f"split {split}", str(n))
    table.add_row("green ROI box found", str(stats["roi_box_found"]))
    grounding = "" if stats["grounding"] == "on" else f" (grounding {stats['grounding']})"
    table.add_row(f"grounded answers{grounding}", str(stats["grounded"]))
    table.add_row("mean image tokens", str(stats["mean_image_tokens"]))
    Console().print(table)


# The finalize options prepare and prepare-merge share: declared once, used by both commands.
FinalizeLang = Annotated[Lang, option(FinalizeOptions, "lang")]
Dialogue = Annotated[bool, option(FinalizeOptions, "dialogue")]
Grounding = Annotated[bool, option(FinalizeOptions, "grounding", "--grounding/--no-grounding")]
ValFraction = Annotated[float, option(FinalizeOptions, "val_fraction", min=0.0, max=0.5)]
TestFraction = Annotated[float, option(FinalizeOptions, "test_fraction", min=0.0, max=0.5)]
DatasetName = Annotated[str, option(FinalizeOptions, "name")]


def _finalize_options(
    lang: Lang, val_fraction: float, test_fraction: float, name: str, dialogue: bool, grounding: bool
) -> FinalizeOptions:
    """prepare's and prepare-merge's finalize options, from the flags they share."""
    return FinalizeOptions(
        lang=lang.value,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        name=name,
        dialogue=dialogue,
        grounding=grounding,
    )


@app.command()
def prepare(
    source: Annotated[
        str,
        typer.Option(
            help="Hub id (UCSC-VLAA/MedTrinity-25M, streamed with HF_TOKEN), a folder or glob of parquet "
            "shards, or with --config 25M_full the metadata parquet."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (LLaMA-Factory dataset_dir). Rerun to resume.")],
    config: Annotated[str, option(ReadOptions, "config")] = ReadOptions.config,
    images: Annotated[
        str | None,
        typer.Option(help="25M_full only: folder of extracted images, or of the .tar.zst archives."),
    ] = None,
    modality: Annotated[Modality, option(StageOptions, "modality")] = StageOptions.modality,
    max_pixels: Annotated[
        int, option(ImageOptions, "max_pixels", min=DEFAULT_MIN_PIXELS)
    ] = ImageOptions.max_pixels,
    roi_box: Annotated[RoiBox, option(ImageOptions, "roi_box")] = ImageOptions.roi_box,
    crop_background: Annotated[bool, option(ImageOptions, "crop_background")] = ImageOptions.crop_background,
    lang: FinalizeLang = FinalizeOptions.lang,
    dialogue: Dialogue = FinalizeOptions.dialogue,
    grounding: Grounding = FinalizeOptions.grounding,
    val_fraction: ValFraction = FinalizeOptions.val_fraction,
    test_fraction: TestFraction = FinalizeOptions.test_fraction,
    limit: Annotated[int | None, typer.Option(min=1, help="Read only the first N source rows.")] = None,
    workers: Annotated[int, option(ReadOptions, "workers", min=1)] = ReadOptions.workers,
    shard: Annotated[
        str | None, typer.Option(help="I/N: process every N-th unit starting at I; join with prepare-merge.")
    ] = None,
    name: DatasetName = FinalizeOptions.name,
    token: Annotated[
        str | None, typer.Option(envvar="HF_TOKEN", show_envvar=True, help="Hugging Face token (gated data).")
    ] = None,
) -> None:
    """Turn MedTrinity-25M into clean CT fine-tuning data in the layout LLaMA-Factory reads.

    Writes images/, train.json, val.json, test.json (sharegpt), dataset_info.json, stats.json and a
    dataset card README.md. Resumable: rerun the same command after an interruption.

    Example: ctscribe prepare --source data/MedTrinity-25M/25M_demo --out data/ct
    """
    from ctscribe.prepare.run import run_prepare

    shard_spec = _parse_shard(shard) if shard else (0, 1)
    stage_options = StageOptions(
        modality=modality.value,
        image=ImageOptions(max_pixels=max_pixels, roi_box=roi_box.value, crop_background=crop_background),
    )
    finalize_options = _finalize_options(lang, val_fraction, test_fraction, name, dialogue, grounding)
    result = run_prepare(
        source,
        out,
        stage_options,
        finalize_options,
        config=config,
        images=images,
        token=token,
        workers=workers,
        shard=shard_spec,
        limit=limit,
    )
    if shard_spec[1] > 1:
        typer.echo(
            f"shard {shard} staged in {out}; join all shards with: "
            "ctscribe prepare-merge SHARD_DIRS... --out DIR"
        )
        return
    _print_stats(result)
    typer.echo(f"wrote {out}")


@app.command("prepare-merge")
def prepare_merge(
    shards: Annotated[
        list[Path], typer.Argument(help="Output folders of prepare --shard I/N, all N of them.")
    ],
    out: Annotated[Path, typer.Option(help="New output folder for the joined data set.")],
    lang: FinalizeLang = FinalizeOptions.lang,
    dialogue: Dialogue = FinalizeOptions.dialogue,
    grounding: Grounding = FinalizeOptions.grounding,
    val_fraction: ValFraction = FinalizeOptions.val_fraction,
    test_fraction: TestFraction = FinalizeOptions.test_fraction,
    name: DatasetName = FinalizeOptions.name,
) -> None:
    """Join the outputs of `prepare --shard I/N` runs into one data set, identical to a single run."""
    from ctscribe.prepare.run import merge_shards

    options = _finalize_options(lang, val_fraction, test_fraction, name, dialogue, grounding)
    _print_stats(merge_shards(shards, out, options))
    typer.echo(f"wrote {out}")


class Answers(StrEnum):
    zh = "zh"
    both = "both"


@app.command()
def translate(
    data: Annotated[Path, typer.Option(help="Prepared data folder (from ctscribe prepare).")],
    out: Annotated[Path, typer.Option(help="New folder for the translated data set. Rerun to resume.")],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible server that translates (vLLM, ctscribe serve), e.g. "
            "http://127.0.0.1:8000; /v1 is added when the URL has no path. Key from CTSCRIBE_API_KEY."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name on the server (needed when it lists several).")
    ] = None,
    captions_zh: Annotated[
        Path | None,
        typer.Option(help="Instead of a server: JSONL or CSV with id and caption_zh, joined by record id."),
    ] = None,
    answers: Annotated[Answers, option(TranslateOptions, "answers")] = TranslateOptions.answers,
    lang: Annotated[Lang, option(TranslateOptions, "lang")] = TranslateOptions.lang,
    max_tokens: Annotated[
        int, option(TranslateOptions, "max_tokens", min=1, max=2048)
    ] = TranslateOptions.max_tokens,
    batch_size: Annotated[int, option(TranslateOptions, "batch_size", min=1)] = TranslateOptions.batch_size,
    check_answers: Annotated[
        bool, option(TranslateOptions, "check_answers")
    ] = TranslateOptions.check_answers,
    name: Annotated[str, option(TranslateOptions, "name")] = TranslateOptions.name,
) -> None:
    """Chinese answers for a prepared data set: through an OpenAI-compatible server, or joined from a file.

    Each distinct caption is asked once; answers are cached in OUT/translations.jsonl, so a rerun asks
    only for what is missing or failed. Writes train/val/test.json (same records and splits, prompts
    asking for the answer's language, dialogue turns rebuilt from the Chinese caption),
    dataset_info.json and stats.json (failures counted by reason). See docs/PREPARE.md.

    Example: ctscribe translate --data data/ct --out data/ct-zh --base-url http://127.0.0.1:8000
    """
    from ctscribe.prepare.translate import run_translate

    options = TranslateOptions(
        answers=answers.value,
        lang=lang.value,
        name=name,
        max_tokens=max_tokens,
        batch_size=batch_size,
        check_answers=check_answers,
    )
    stats = run_translate(data, out, options, base_url=base_url, model=model, captions_zh=captions_zh)
    translation = stats["translation"]
    if "requested" in translation:
        typer.echo(
            f"{translation['captions']} caption(s) to translate: {translation['cached']} cached, "
            f"{translation['requested']} requested, {translation['translated']} translated"
        )
        for reason, count in translation["failed"].items():
            typer.echo(f"  {count} x {reason}", err=True)
    skipped = sum(stats["skipped"].values())
    typer.echo(f"wrote {stats['kept']} record(s) to {out}; {skipped} without a Chinese caption left out")
    if stats["kept"] == 0:
        raise typer.Exit(1)


class TrainingEngine(StrEnum):
    native = "native"
    llamafactory = "llamafactory"


LlamaFactoryCliOption = Annotated[
    Path | None,
    typer.Option(
        "--llamafactory-cli",
        help="With --engine llamafactory: the llamafactory-cli to run. Default: .venv-lf from make lf-env, "
        "$CTSCRIBE_LLAMAFACTORY_CLI, or the PATH.",
    ),
]


@app.command()
def train(
    recipe: Annotated[
        str | None,
        typer.Argument(help="Recipe YAML file, or a built-in name (original, tiny-cpu). Default: original."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared data folder (from ctscribe prepare).")] = None,
    model: Annotated[
        str | None,
        typer.Option(help=f"Base model: a Hub id ({DEFAULT_FAMILY.example_checkpoint}) or a local folder."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder: adapter, logs, checkpoints.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set lora_rank=16 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last complete checkpoint.")
    ] = False,
    engine: Annotated[TrainingEngine, option(TrainOptions, "engine")] = TrainOptions.engine,
    llamafactory_cli: LlamaFactoryCliOption = None,
) -> None:
    """Fine-tune a base model on prepared data (LoRA by default; QLoRA and full fine-tuning too).

    The default recipe is the original project's: LoRA r8/alpha16, lr 5e-5, 3 epochs, batch 2 x 8.
    Several GPUs: accelerate launch -m ctscribe train ... or torchrun --nproc_per_node N -m ctscribe train ...

    Example (the default recipe's base): ctscribe train --data data/ct --out runs/lora
    With LLaMA-Factory: ctscribe train --engine llamafactory --data data/ct --out runs/lf-lora
    """
    from ctscribe.recipe import load_recipe

    resolved = load_recipe(
        recipe,
        set_ or (),
        dataset_dir=str(data) if data else None,
        output_dir=str(out) if out else None,
        model_name_or_path=model,
    )
    if engine is TrainingEngine.llamafactory:
        from ctscribe.train.llamafactory import train as train_llamafactory

        final = train_llamafactory(resolved, resume=resume, cli=llamafactory_cli)
    else:
        from ctscribe.train.native import train as train_native

        final = train_native(resolved, resume=resume)
    typer.echo(f"wrote {final}")


class ExportDtype(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


@app.command()
def export(
    base: Annotated[str, typer.Option(help="The base model the adapter was trained on: Hub id or folder.")],
    adapter: Annotated[Path, typer.Option(help="The adapter folder, or the run folder that holds adapter/.")],
    out: Annotated[Path, typer.Option(help="New folder for the merged model.")],
    dtype: Annotated[ExportDtype, option(ExportOptions, "dtype")] = ExportOptions.dtype,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    engine: Annotated[TrainingEngine, option(ExportOptions, "engine")] = ExportOptions.engine,
    llamafactory_cli: LlamaFactoryCliOption = None,
) -> None:
    """Merge a LoRA adapter into its base: a standalone model for transformers, vLLM and LLaMA-Factory.

    Checks its own work first: the adapter must change the base model's output on a probe image, and
    the merged model must match base + adapter; otherwise nothing is written. Adapters of either
    engine merge with either engine.

    Example: ctscribe export --base BASE --adapter runs/lora --out models/ct-2b (BASE: the run's --model)
    """
    from ctscribe.export import export_llamafactory, export_merged

    if engine is TrainingEngine.llamafactory:
        check = export_llamafactory(base, adapter, out, dtype=dtype.value, force=force, cli=llamafactory_cli)
    else:
        check = export_merged(base, adapter, out, dtype=dtype.value, force=force)
    typer.echo(
        f"wrote {out} (adapter effect {check.adapter_effect:.3g}, merge error {check.merge_error:.2g})"
    )


class DescriptionLang(StrEnum):
    en = "en"
    zh = "zh"


# The generation options predict and evaluate share: declared once, used by both commands.
BackendOption = Annotated[Backend, option(GenerateOptions, "backend")]
# The model a command describes with (predict and study).
ModelOption = Annotated[str, typer.Option(help="Model: Hub id or folder (a merged export, or the base).")]
AdapterOption = Annotated[
    Path | None, typer.Option(help="LoRA adapter (or its run folder) to apply to --model.")
]
DescriptionLangOption = Annotated[
    DescriptionLang | None,
    typer.Option(help="Language of the description. Default: the one the model was trained in, else en."),
]
BatchSize = Annotated[int, option(GenerateOptions, "batch_size", min=1)]
MaxNewTokens = Annotated[int, option(GenerateOptions, "max_new_tokens", min=1)]
BaseUrlOption = Annotated[
    str | None, typer.Option(help="With --backend openai: the server's API root, e.g. http://host:8000/v1.")
]
MaxPixelsOption = Annotated[
    int | None,
    typer.Option(
        min=DEFAULT_MIN_PIXELS,
        help=f"Pixel budget per image. Default: the one the model (or adapter) records from its training, "
        f"else {DEFAULT_MAX_PIXELS}. With --backend openai the server's cannot be read: this decides.",
        show_default=False,
    ),
]


@app.command()
def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Images (PNG/JPG), folders (recursive), DICOM files or series folders, NIfTI volumes, "
            "or a prepared split JSON.",
            show_default=False,
        ),
    ],
    model: ModelOption,
    out: Annotated[Path, typer.Option(help="JSONL output; rerunning skips inputs already answered.")],
    adapter: AdapterOption = None,
    csv: Annotated[Path | None, typer.Option(help="Also write the results as a CSV table.")] = None,
    lang: DescriptionLangOption = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Ask this instead of the default question (the plain prompt the model trained on)."
        ),
    ] = None,
    window: Annotated[str, option(InputOptions, "window")] = InputOptions.window,
    slices: Annotated[str, option(InputOptions, "slices")] = InputOptions.slices,
    batch_size: BatchSize = GenerateOptions.batch_size,
    limit: Annotated[int | None, typer.Option(min=1, help="Describe at most this many images.")] = None,
    max_new_tokens: MaxNewTokens = GenerateOptions.max_new_tokens,
    max_pixels: MaxPixelsOption = None,
    backend: BackendOption = GenerateOptions.backend,
    base_url: BaseUrlOption = None,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any input failed.")] = False,
) -> None:
    """Describe CT images in batches: one JSONL record per image or slice, with the window used.

    Every record carries the notice that the text assists and does not replace a clinician's reading.
    No patient identifiers from DICOM headers are written or logged. Exit status 0 when at least one
    input succeeded (error records name the failures), 1 when none did, or when any did with --strict.

    Example: ctscribe predict scans/ --model models/ct-2b --out preds.jsonl --window lung --slices all
    """
    from ctscribe.predict import predict as run_predict
    from ctscribe.predict import write_csv

    settings = _settings(backend, model, adapter, max_pixels)
    language = lang.value if lang else settings.language
    engine = _backend(backend, model, adapter, settings, base_url)
    summary = run_predict(
        engine,
        list(inputs),
        out,
        prompt=prompt,
        default_prompt=settings.prompt(language),
        window=window,
        slices=slices,
        batch_size=batch_size,
        limit=limit,
        max_new_tokens=max_new_tokens,
    )
    if csv is not None:
        write_csv(out, csv)
    typer.echo(
        f"wrote {summary.written} description(s) to {out}; {summary.failed} failed, "
        f"{summary.skipped} already done"
    )
    for reason, count in sorted(summary.errors.items(), key=lambda item: -item[1])[:10]:
        typer.echo(f"  {count} x {reason}", err=True)
    if summary.succeeded == 0 or (strict and summary.failed):
        raise typer.Exit(1)


@app.command()
def study(
    source: Annotated[
        Path,
        typer.Argument(
            help="A DICOM series folder (several series are told apart), a zip of one, a DICOM file, a NIfTI "
            "volume, or a folder of slice images.",
            show_default=False,
        ),
    ],
    model: ModelOption,
    out: Annotated[Path, typer.Option(help="Report folder; rerunning resumes an interrupted study.")],
    adapter: AdapterOption = None,
    lang: DescriptionLangOption = None,
    window: Annotated[str, option(InputOptions, "window")] = InputOptions.window,
    slices: Annotated[str, option(StudyOptions, "slices")] = StudyOptions.slices,
    batch_size: BatchSize = GenerateOptions.batch_size,
    max_new_tokens: MaxNewTokens = GenerateOptions.max_new_tokens,
    max_pixels: MaxPixelsOption = None,
    backend: BackendOption = GenerateOptions.backend,
    base_url: BaseUrlOption = None,
) -> None:
    """Read a whole CT series: describe its slices, gather the findings they state over neighbouring
    slices, and report each with its slice range, key slice and box.

    Writes OUT/study.json, OUT/report.md (key slices drawn with their boxes), OUT/strip.png (findings by
    slice) and OUT/slices.jsonl. A slice model does not see across slices: see docs/STUDY.md for what
    the grouping can and cannot tell. No DICOM identifier or UID is written or logged.

    Example: ctscribe study scans/ct-chest/ --model models/ct-2b --out reports/ct-chest --slices body
    """
    from ctscribe.study.describe import check_slices
    from ctscribe.study.run import NoSeriesError, run_study

    try:
        check_slices(slices)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--slices") from None
    settings = _settings(backend, model, adapter, max_pixels)
    engine = _backend(backend, model, adapter, settings, base_url)
    prompt = settings.prompt(lang.value if lang else settings.language)
    try:
        report = run_study(
            engine,
            source,
            out,
            prompt=prompt,
            slices=slices,
            window=window,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
    except (NoSeriesError, FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        for item in getattr(error, "skipped", []):
            typer.echo(f"  {item['file']}: {item['reason']}", err=True)
        raise typer.Exit(1) from None
    for entry in report["series"]:
        typer.echo(
            f"{entry['label']} ({entry['source']}): {entry['slices_read']} of {entry['slice_count']} "
            f"slices read, {len(entry['skipped'])} skipped, {len(entry['findings'])} finding(s); "
            f"order: {entry['order']}"
        )
    for item in report["skipped"]:
        typer.echo(f"  not in any series: {item['file']}: {item['reason']}", err=True)
    typer.echo(f"wrote {out / 'study.json'} and {out / 'report.md'}")


def _settings(backend: Backend, model: str, adapter: Path | None, max_pixels: int | None):
    """The pixel budget and default prompts predict, evaluate and serve use (ctscribe.model_settings)."""
    from ctscribe.model_settings import inference_settings

    return inference_settings(model, adapter, max_pixels, remote=backend is Backend.openai)


def _backend(
    backend: Backend,
    model: str | None,
    adapter: Path | None,
    settings,
    base_url: str | None = None,
    api_key: str | None = None,
):
    """The generation backend the commands share (ctscribe.generate.backends.make_backend); options
    that do not fit it are usage errors, as typer shows its own."""
    from ctscribe.generate.backends import BackendOptionError, make_backend

    try:
        return make_backend(backend, model, adapter, settings, base_url=base_url, api_key=api_key)
    except BackendOptionError as error:
        raise typer.BadParameter(str(error), param_hint=error.option) from None


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="The test split: DIR/test.json from ctscribe prepare.")],
    out: Annotated[Path, typer.Option(help="Report folder; rerunning continues an interrupted evaluation.")],
    model: Annotated[
        str | None,
        typer.Option(help="Model to evaluate: Hub id or folder (a merged export, or the base)."),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="LoRA adapter (or its run folder) for --model.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Also evaluate this model (e.g. the untrained base) for comparison.")
    ] = None,
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            help="Instead of --model: compare two predictions files (ctscribe predict's JSONL over "
            "--data), matched to the references by id: A - B per metric with interval and p-value.",
        ),
    ] = None,
    image_swap: Annotated[
        str | None,
        typer.Option(
            help="Describe the split again with each image swapped for another record's (any: of any "
            "region; same-region: of the same body region) and report how much each score drops."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Training run folder: adds its loss curve to the report and keeps the results in it "
            "(RUN_DIR/eval/metrics.json), where the model card of a later export reads them."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N test records only.")] = None,
    batch_size: BatchSize = GenerateOptions.batch_size,
    max_new_tokens: MaxNewTokens = GenerateOptions.max_new_tokens,
    max_pixels: MaxPixelsOption = None,
    examples: Annotated[int, option(EvaluateOptions, "examples", min=0)] = EvaluateOptions.examples,
    bertscore_model: Annotated[
        Path | None,
        typer.Option(help="Local folder of a BERT-family model: adds BERTScore F1 (never downloads)."),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help=f"Clinical entity metrics to add, comma-separated: {', '.join(ENTITY_METRICS)}. They run in "
            "their own environment (make metrics-env) and load their models from the Hugging Face Hub.",
        ),
    ] = None,
    metric_model: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=MODEL: a Hub id or local folder instead of a metric's default model "
            f"({', '.join(f'{k}={v}' for k, v in ENTITY_MODELS.items())}); repeat for each.",
        ),
    ] = None,
    backend: BackendOption = GenerateOptions.backend,
    base_url: BaseUrlOption = None,
    study: Annotated[
        bool,
        typer.Option(
            "--study",
            help="--data is the truth.json of `ctscribe fixtures phantom-series`: score study reports of its "
            "series (finding recall and precision, key-slice distance and IoU) instead of a test split.",
        ),
    ] = False,
) -> None:
    """Score a model on a test split: text metrics, clinical findings, base vs fine-tuned, plots.

    Writes predictions.jsonl, metrics.json (each number with a 95% bootstrap interval), report.md,
    metrics.png, regions.png, loss.png (with --run-dir, which also keeps metrics.json in the run folder
    for the model card) and gallery.html. With --baseline (or --compare) each metric's paired
    difference comes with its interval and a permutation test's p-value. A split prepared with
    --dialogue also gets its follow-up questions answered (dialogue_predictions.jsonl) and scored:
    closed-question accuracy and open-question recall. --metrics ratescore,radgraph adds RaTEScore and
    RadGraph-F1. See docs/EVALUATION.md.

    Example: ctscribe evaluate --model models/ct-2b --data data/ct/test.json --out reports/ct-2b
    --baseline BASE --run-dir runs/lora (BASE: the base model the run trained)
    """
    from ctscribe.evaluate.entity_metrics import EntityMetrics, parse_metrics, parse_models
    from ctscribe.evaluate.image_swap import SWAP_MODES
    from ctscribe.evaluate.report import box_count, comparison_rows, image_swap_rows
    from ctscribe.evaluate.run import compare_predictions, run_evaluation

    try:
        names = parse_metrics(metrics or "")
        entity = EntityMetrics(names, parse_models(metric_model or ())) if names else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--metrics/--metric-model") from None
    if (model is None) == (compare is None):
        raise typer.BadParameter("give either --model or --compare A.jsonl B.jsonl", param_hint="--model")
    if image_swap is not None and image_swap not in SWAP_MODES:
        raise typer.BadParameter(f"choose one of {', '.join(SWAP_MODES)}", param_hint="--image-swap")
    if compare is not None:
        if baseline or adapter or image_swap or run_dir or study:
            raise typer.BadParameter(
                "--compare scores two predictions files: it takes no model, adapter, baseline, "
                "image swap, run folder or study",
                param_hint="--compare",
            )
        scores = compare_predictions(
            *compare, data, out, examples=examples, bertscore_model=bertscore_model, entity=entity
        )
    else:
        # The baseline is scored at the fine-tuned model's budget: the comparison is then of models alone.
        settings = _settings(backend, model, adapter, max_pixels)
        base = (lambda: _backend(backend, baseline, None, settings, base_url)) if baseline else None
        if study:
            from ctscribe.evaluate.study import STUDY_METRICS_JSON, evaluate_studies, metric_rows

            scored = evaluate_studies(
                lambda: _backend(backend, model, adapter, settings, base_url),
                data,
                out,
                prompt=settings.prompt(settings.language),
                make_baseline=base,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
            )
            for label, value, base_value in metric_rows(scored):
                typer.echo(f"{label:<20} {value:<36} {base_value if baseline else ''}")
            typer.echo(f"wrote {out / STUDY_METRICS_JSON}")
            return
        scores = run_evaluation(
            lambda: _backend(backend, model, adapter, settings, base_url),
            data,
            out,
            # With --backend openai the baseline is another model of the same server (vLLM with LoRA
            # serves the base and the adapter side by side).
            make_baseline=base,
            run_dir=run_dir,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            examples=examples,
            bertscore_model=bertscore_model,
            image_swap=image_swap,
            entity=entity,
        )
    for row in comparison_rows(scores):
        typer.echo("  ".join(f"{cell:<26}" for cell in row).rstrip())
    if rows := image_swap_rows(scores):
        typer.echo(f"image swap ({image_swap}): metric, own image, swapped image, drop")
        for row in rows:
            typer.echo("  ".join(f"{cell:<26}" for cell in row).rstrip())
    if counted := box_count(scores):
        typer.echo(counted)
    typer.echo(f"wrote {out / 'report.md'}")


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="Model: Hub id or folder (a merged export, or the base); with --upstream, the upstream's "
            "model name (needed when it serves several)."
        ),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="LoRA adapter (or its run folder) for --model.")
    ] = None,
    host: Annotated[str, option(ServeOptions, "host")] = ServeOptions.host,
    port: Annotated[int, option(ServeOptions, "port")] = ServeOptions.port,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CTSCRIBE_API_KEY", help="Require this bearer key on the API and ask for it on the page."
        ),
    ] = None,
    max_batch: Annotated[int, option(ServeOptions, "max_batch", min=1)] = ServeOptions.max_batch,
    max_queue: Annotated[int, option(ServeOptions, "max_queue", min=1)] = ServeOptions.max_queue,
    max_image_mb: Annotated[
        float, option(ServeOptions, "max_image_mb", min=0.01)
    ] = ServeOptions.max_image_mb,
    max_pixels: MaxPixelsOption = None,
    web: Annotated[bool, option(ServeOptions, "web")] = ServeOptions.web,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name in /v1/models and responses (default: --model as given).")
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="Put the page and this API in front of an OpenAI-compatible server (such as vLLM) at "
            "this API root, e.g. http://127.0.0.1:8001/v1, instead of loading a model here."
        ),
    ] = None,
    upstream_api_key: Annotated[
        str | None, typer.Option(envvar="CTSCRIBE_UPSTREAM_API_KEY", help="The upstream server's API key.")
    ] = None,
) -> None:
    """Serve the model: an OpenAI-compatible API (/v1/chat/completions) and a web page for clinicians.

    Concurrent requests are batched by one engine. The notice that output assists and does not
    replace a clinician's reading travels in the X-Clinical-Notice header and a clinical_notice field.

    With --upstream, requests are checked, their images prepared at --max-pixels, and then forwarded
    to that server (streaming too), which does the generating and batching (docs/SERVE.md).

    Example: ctscribe serve --model models/ct-2b --api-key "$KEY" --host 0.0.0.0
    """
    from ctscribe.serve.app import serve as run_server

    if upstream is not None:
        # The upstream's own record cannot be read: --max-pixels (or the default) decides.
        settings = _settings(Backend.openai, upstream, None, max_pixels)
        # Never CTSCRIBE_API_KEY, the client-side default: that is this server's own key, not the upstream's.
        engine = _backend(Backend.openai, model, adapter, settings, upstream, upstream_api_key or "none")
    elif model is None:
        raise typer.BadParameter("give the model to serve, or --upstream URL", param_hint="--model")
    else:
        settings = _settings(Backend.transformers, model, adapter, max_pixels)
        engine = _backend(Backend.transformers, model, adapter, settings)
    if served_model_name:
        engine.name = served_model_name
    options = ServeOptions(host, port, max_batch, max_queue, max_image_mb, web)
    run_server(
        engine,
        options,
        api_key=api_key,
        forward=upstream is not None,
        prompts=settings.prompts,
        language=settings.language,
    )


@app.command()
def demo(
    out: Annotated[Path, option(DemoOptions, "out")] = DemoOptions.out,
    rows: Annotated[int, option(DemoOptions, "rows", min=20)] = DemoOptions.rows,
    seed: Annotated[int, option(DemoOptions, "seed")] = DemoOptions.seed,
    max_steps: Annotated[int, option(DemoOptions, "max_steps", min=1)] = DemoOptions.max_steps,
) -> None:
    """Run ctscribe offline on its built-in fixtures: prepare, train, what the model learned, evaluate.

    No downloads; a few minutes on 2 CPU cores.
    """
    from ctscribe.demo import run_demo

    run_demo(out, rows=rows, seed=seed, max_steps=max_steps)


def main() -> None:
    """Console entry point: expected failures (bad paths, bad values) print one clear line, no traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("ctscribe").setLevel(logging.INFO)  # ours at INFO; libraries' chatter stays quiet
    from ctscribe.generate.openai_engine import ServerError
    from ctscribe.llamafactory_cli import LlamaFactoryError

    expected = (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError, LlamaFactoryError)
    try:
        app()
    except (*expected, ServerError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
