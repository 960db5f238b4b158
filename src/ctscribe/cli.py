"""The `ctscribe` command: one sub-command per pipeline step.

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so that
`ctscribe --help` answers at once.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ctscribe import __version__
from ctscribe.generate.backends import Backend
from ctscribe.model_settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

if TYPE_CHECKING:
    from ctscribe.prepare.run import FinalizeOptions

app = typer.Typer(
    help="Fine-tune Qwen2-VL on MedTrinity-25M CT images and describe CT images to assist clinicians.",
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


class ModelSize(StrEnum):
    tiny = "tiny"
    small = "small"
    b2 = "2b"


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
    """Fine-tune Qwen2-VL on MedTrinity-25M CT images and describe CT images to assist clinicians."""


@fixtures_app.command("tiny-model")
def fixtures_tiny_model(
    out: Annotated[Path, typer.Argument(help="New folder to write the model to.")],
    size: Annotated[
        ModelSize,
        typer.Option(
            help="tiny: ~10M parameters (tests); small: ~20M; 2b: the real Qwen2-VL-2B shape (GPU only)."
        ),
    ] = ModelSize.tiny,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a random-weight Qwen2-VL with the real Qwen tokenizer, chat template and file layout.

    The folder loads with the standard transformers calls, e.g.
    `Qwen2VLForConditionalGeneration.from_pretrained(OUT)` and `AutoProcessor.from_pretrained(OUT)`.
    """
    from ctscribe.fixtures.tiny_model import build_tiny_model

    path = build_tiny_model(out, size=size.value, seed=seed)
    typer.echo(f"wrote {size.value} Qwen2-VL fixture to {path}")


@fixtures_app.command("phantom")
def fixtures_phantom(
    out: Annotated[Path, typer.Argument(help="New folder to write the data set to.")],
    rows: Annotated[int, typer.Option(min=1, help="Number of rows.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical files.")] = 0,
    rows_per_shard: Annotated[int, typer.Option(min=1, help="Rows per parquet shard.")] = 500,
    layout: Annotated[
        Layout,
        typer.Option(help="demo: 25M_demo parquet shards; full: 25M_full metadata + .tar.zst archives."),
    ] = Layout.demo,
    short_captions: Annotated[
        bool, typer.Option(help="Short CT captions ('CT of the chest. ...') that a tiny model learns fast.")
    ] = False,
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


Fraction = Annotated[float, typer.Option(min=0.0, max=0.5)]
DialogueOption = typer.Option(
    help="Multi-turn records: the description, then a clinician's follow-up questions (organ, abnormality, "
    "location, effect, balanced yes/no) answered from the caption only, and for grounded rows where the "
    "region of interest is (its box). See docs/PREPARE.md."
)
GroundingOption = typer.Option(
    "--grounding/--no-grounding",
    help="Put the green ROI box, on the 0-1000 grid of the prepared image, into the answer after the "
    "caption's region-of-interest phrase (Qwen2-VL's grounding format). Never with --roi-box keep: the box "
    "stays visible in the image, so no answer is grounded. See docs/PREPARE.md.",
)


def _finalize_options(
    lang: Lang, val_fraction: float, test_fraction: float, name: str, dialogue: bool, grounding: bool
) -> FinalizeOptions:
    """prepare's and prepare-merge's finalize options, from the flags they share."""
    from ctscribe.prepare.run import FinalizeOptions

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
    config: Annotated[str, typer.Option(help="25M_demo (image, id, caption) or 25M_full.")] = "25M_demo",
    images: Annotated[
        str | None,
        typer.Option(help="25M_full only: folder of extracted images, or of the .tar.zst archives."),
    ] = None,
    modality: Annotated[Modality, typer.Option(help="Keep CT rows only, or every modality.")] = Modality.ct,
    max_pixels: Annotated[
        int,
        typer.Option(
            min=DEFAULT_MIN_PIXELS,
            help=f"Pixel budget per image; the default, {DEFAULT_MAX_PIXELS:,}, is ~324 image tokens.",
        ),
    ] = DEFAULT_MAX_PIXELS,
    roi_box: Annotated[
        RoiBox,
        typer.Option(
            help="MedTrinity's drawn green ROI box: remove (inpaint) or keep it (keep: no grounded answers)."
        ),
    ] = RoiBox.remove,
    crop_background: Annotated[bool, typer.Option(help="Crop the black air around the body.")] = True,
    lang: Annotated[Lang, typer.Option(help="Prompt language (answers are the English captions).")] = Lang.en,
    dialogue: Annotated[bool, DialogueOption] = False,
    grounding: Annotated[bool, GroundingOption] = True,
    val_fraction: Fraction = 0.02,
    test_fraction: Fraction = 0.02,
    limit: Annotated[int | None, typer.Option(min=1, help="Read only the first N source rows.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = max(
        1, (os.cpu_count() or 2) - 1
    ),
    shard: Annotated[
        str | None, typer.Option(help="I/N: process every N-th unit starting at I; join with prepare-merge.")
    ] = None,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "mllm_med",
    token: Annotated[
        str | None, typer.Option(envvar="HF_TOKEN", show_envvar=True, help="Hugging Face token (gated data).")
    ] = None,
) -> None:
    """Turn MedTrinity-25M into clean CT fine-tuning data in the layout LLaMA-Factory reads.

    Writes images/, train.json, val.json, test.json (sharegpt), dataset_info.json, stats.json and a
    dataset card README.md. Resumable: rerun the same command after an interruption.

    Example: ctscribe prepare --source data/MedTrinity-25M/25M_demo --out data/ct
    """
    from ctscribe.ct.images import ImageOptions
    from ctscribe.prepare.run import StageOptions, run_prepare

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
    lang: Annotated[Lang, typer.Option(help="Prompt language.")] = Lang.en,
    dialogue: Annotated[bool, DialogueOption] = False,
    grounding: Annotated[bool, GroundingOption] = True,
    val_fraction: Fraction = 0.02,
    test_fraction: Fraction = 0.02,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "mllm_med",
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
    answers: Annotated[
        Answers, typer.Option(help="zh: every answer Chinese; both: Chinese or English, half each (by id).")
    ] = Answers.zh,
    lang: Annotated[
        Lang, typer.Option(help="Prompt language (the prompts ask for the answer's language).")
    ] = Lang.zh,
    max_tokens: Annotated[
        int, typer.Option(min=1, max=2048, help="Longest translation; a longer one is a failure.")
    ] = 1024,
    batch_size: Annotated[int, typer.Option(min=1, help="Concurrent requests (and cache checkpoint).")] = 16,
    check_answers: Annotated[
        bool,
        typer.Option(
            help="Refuse answers cut off at --max-tokens or not mostly Chinese. --no-check-answers keeps any "
            "non-empty answer (bilingual servers; plumbing tests with a tiny model)."
        ),
    ] = True,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "mllm_med",
) -> None:
    """Chinese answers for a prepared data set: through an OpenAI-compatible server, or joined from a file.

    Each distinct caption is asked once; answers are cached in OUT/translations.jsonl, so a rerun asks
    only for what is missing or failed. Writes train/val/test.json (same records and splits, prompts
    asking for the answer's language, dialogue turns rebuilt from the Chinese caption),
    dataset_info.json and stats.json (failures counted by reason). See docs/PREPARE.md.

    Example: ctscribe translate --data data/ct --out data/ct-zh --base-url http://127.0.0.1:8000
    """
    from ctscribe.prepare.translate import TranslateOptions, run_translate

    stats = run_translate(
        data,
        out,
        TranslateOptions(answers=answers.value, lang=lang.value, name=name),
        base_url=base_url,
        model=model,
        captions_zh=captions_zh,
        max_tokens=max_tokens,
        batch_size=batch_size,
        check=check_answers,
    )
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


TrainingEngineOption = Annotated[
    TrainingEngine,
    typer.Option(
        help="native: ctscribe's transformers + PEFT trainer. llamafactory: the same recipe run by "
        "llamafactory-cli in its own environment (make lf-env); see docs/LLAMAFACTORY.md."
    ),
]
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
        str | None, typer.Option(help="Base model: a Hub id (Qwen/Qwen2-VL-2B-Instruct) or a local folder.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder: adapter, logs, checkpoints.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set lora_rank=16 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last complete checkpoint.")
    ] = False,
    engine: TrainingEngineOption = TrainingEngine.native,
    llamafactory_cli: LlamaFactoryCliOption = None,
) -> None:
    """Fine-tune Qwen2-VL on prepared data (LoRA by default; QLoRA and full fine-tuning too).

    The default recipe is the original project's: LoRA r8/alpha16, lr 5e-5, 3 epochs, batch 2 x 8.
    Several GPUs: accelerate launch -m ctscribe train ... or torchrun --nproc_per_node N -m ctscribe train ...

    Example: ctscribe train --data data/ct --model Qwen/Qwen2-VL-2B-Instruct --out runs/lora
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
    dtype: Annotated[ExportDtype, typer.Option(help="Weight type of the merged model.")] = ExportDtype.bf16,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    engine: Annotated[
        TrainingEngine,
        typer.Option(help="Who merges: native (PEFT here) or llamafactory (llamafactory-cli export)."),
    ] = TrainingEngine.native,
    llamafactory_cli: LlamaFactoryCliOption = None,
) -> None:
    """Merge a LoRA adapter into its base: a standalone model for transformers, vLLM and LLaMA-Factory.

    Checks its own work first: the adapter must change the base model's output on a probe image, and
    the merged model must match base + adapter; otherwise nothing is written. Adapters of either
    engine merge with either engine.

    Example: ctscribe export --base Qwen/Qwen2-VL-2B-Instruct --adapter runs/lora --out models/ct-2b
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


BackendOption = Annotated[
    Backend,
    typer.Option(
        help="Generation backend: transformers, vllm (run from .venv-vllm: make vllm-env), or openai: any "
        "OpenAI-compatible server at --base-url (ctscribe serve, vLLM), key from CTSCRIBE_API_KEY."
    ),
]
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
    model: Annotated[str, typer.Option(help="Model: Hub id or folder (a merged export, or the base).")],
    out: Annotated[Path, typer.Option(help="JSONL output; rerunning skips inputs already answered.")],
    adapter: Annotated[
        Path | None, typer.Option(help="LoRA adapter (or its run folder) to apply to --model.")
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="Also write the results as a CSV table.")] = None,
    lang: Annotated[
        DescriptionLang | None,
        typer.Option(help="Language of the description. Default: the one the model was trained in, else en."),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Ask this instead of the default question (the plain prompt the model trained on)."
        ),
    ] = None,
    window: Annotated[
        str,
        typer.Option(
            help="CT window for DICOM/NIfTI: auto, a preset (lung, mediastinum, bone, brain, soft-tissue, "
            "liver, ...) or WIDTH/LEVEL in HU such as 400/50."
        ),
    ] = "auto",
    slices: Annotated[
        str, typer.Option(help="Volumes and series: middle, all, or every:K (every K-th slice).")
    ] = "middle",
    batch_size: Annotated[int, typer.Option(min=1, help="Images generated together.")] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Describe at most this many images.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest description, in tokens.")] = 256,
    max_pixels: MaxPixelsOption = None,
    backend: BackendOption = Backend.transformers,
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
    batch_size: Annotated[int, typer.Option(min=1, help="Images generated together.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest description, in tokens.")] = 256,
    max_pixels: MaxPixelsOption = None,
    examples: Annotated[int, typer.Option(min=0, help="Examples in gallery.html.")] = 24,
    bertscore_model: Annotated[
        Path | None,
        typer.Option(help="Local folder of a BERT-family model: adds BERTScore F1 (never downloads)."),
    ] = None,
    backend: BackendOption = Backend.transformers,
    base_url: BaseUrlOption = None,
) -> None:
    """Score a model on a test split: text metrics, clinical findings, base vs fine-tuned, plots.

    Writes predictions.jsonl, metrics.json (each number with a 95% bootstrap interval), report.md,
    metrics.png, regions.png, loss.png (with --run-dir, which also keeps metrics.json in the run folder
    for the model card) and gallery.html. With --baseline (or --compare) each metric's paired
    difference comes with its interval and a permutation test's p-value. A split prepared with
    --dialogue also gets its follow-up questions answered (dialogue_predictions.jsonl) and scored:
    closed-question accuracy and open-question recall. See docs/EVALUATION.md.

    Example: ctscribe evaluate --model models/ct-2b --data data/ct/test.json --out reports/ct-2b
    --baseline Qwen/Qwen2-VL-2B-Instruct --run-dir runs/lora
    """
    from ctscribe.evaluate.image_swap import SWAP_MODES
    from ctscribe.evaluate.report import box_count, comparison_rows, image_swap_rows
    from ctscribe.evaluate.run import compare_predictions, run_evaluation

    if (model is None) == (compare is None):
        raise typer.BadParameter("give either --model or --compare A.jsonl B.jsonl", param_hint="--model")
    if image_swap is not None and image_swap not in SWAP_MODES:
        raise typer.BadParameter(f"choose one of {', '.join(SWAP_MODES)}", param_hint="--image-swap")
    if compare is not None:
        if baseline or adapter or image_swap or run_dir:
            raise typer.BadParameter(
                "--compare scores two predictions files: it takes no model, adapter, baseline, "
                "image swap or run folder",
                param_hint="--compare",
            )
        metrics = compare_predictions(*compare, data, out, examples=examples, bertscore_model=bertscore_model)
    else:
        # The baseline is scored at the fine-tuned model's budget: the comparison is then of models alone.
        settings = _settings(backend, model, adapter, max_pixels)
        base = (lambda: _backend(backend, baseline, None, settings, base_url)) if baseline else None
        metrics = run_evaluation(
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
        )
    for row in comparison_rows(metrics):
        typer.echo("  ".join(f"{cell:<26}" for cell in row).rstrip())
    if rows := image_swap_rows(metrics):
        typer.echo(f"image swap ({image_swap}): metric, own image, swapped image, drop")
        for row in rows:
            typer.echo("  ".join(f"{cell:<26}" for cell in row).rstrip())
    if counted := box_count(metrics):
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
    host: Annotated[
        str, typer.Option(help="Address to bind; the default answers this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CTSCRIBE_API_KEY", help="Require this bearer key on the API and ask for it on the page."
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most requests generated together.")] = 8,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Most requests waiting or running; more get 503 and a retry hint.")
    ] = 64,
    max_image_mb: Annotated[float, typer.Option(min=0.01, help="Largest image upload, in MB.")] = 20,
    max_pixels: MaxPixelsOption = None,
    web: Annotated[bool, typer.Option(help="Serve the web page at / too.")] = True,
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
    run_server(
        engine,
        host=host,
        port=port,
        api_key=api_key,
        max_batch=max_batch,
        max_queue=max_queue,
        max_image_mb=max_image_mb,
        web=web,
        forward=upstream is not None,
        prompts=settings.prompts,
        language=settings.language,
    )


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the fixtures and outputs (reused when present).")
    ] = Path("build/demo"),
    rows: Annotated[int, typer.Option(min=20, help="Rows in the phantom data set.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed for the fixtures.")] = 0,
    max_steps: Annotated[int, typer.Option(min=1, help="Training steps (300 learns the body region).")] = 300,
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
