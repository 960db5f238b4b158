"""The `ctscribe` command: one sub-command per pipeline step.

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so that
`ctscribe --help` answers at once.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ctscribe import __version__

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
    table.add_row("mean image tokens", str(stats["mean_image_tokens"]))
    Console().print(table)


Fraction = Annotated[float, typer.Option(min=0.0, max=0.5)]


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
        int, typer.Option(min=3136, help="Pixel budget per image: 262144 = 512x512 = ~324 image tokens.")
    ] = 262144,
    roi_box: Annotated[
        RoiBox, typer.Option(help="MedTrinity's drawn green ROI box: remove (inpaint) or keep it.")
    ] = RoiBox.remove,
    crop_background: Annotated[bool, typer.Option(help="Crop the black air around the body.")] = True,
    lang: Annotated[Lang, typer.Option(help="Prompt language (answers are the English captions).")] = Lang.en,
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
    from ctscribe.data.images import ImageOptions
    from ctscribe.data.prepare import FinalizeOptions, StageOptions, run_prepare

    shard_spec = _parse_shard(shard) if shard else (0, 1)
    stage_options = StageOptions(
        modality=modality.value,
        image=ImageOptions(max_pixels=max_pixels, roi_box=roi_box.value, crop_background=crop_background),
    )
    finalize_options = FinalizeOptions(
        lang=lang.value, val_fraction=val_fraction, test_fraction=test_fraction, name=name
    )
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
    val_fraction: Fraction = 0.02,
    test_fraction: Fraction = 0.02,
    name: Annotated[str, typer.Option(help="Dataset name in dataset_info.json.")] = "mllm_med",
) -> None:
    """Join the outputs of `prepare --shard I/N` runs into one data set, identical to a single run."""
    from ctscribe.data.prepare import FinalizeOptions, merge_shards

    options = FinalizeOptions(
        lang=lang.value, val_fraction=val_fraction, test_fraction=test_fraction, name=name
    )
    _print_stats(merge_shards(shards, out, options))
    typer.echo(f"wrote {out}")


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
) -> None:
    """Fine-tune Qwen2-VL on prepared data (LoRA by default; QLoRA and full fine-tuning too).

    The default recipe is the original project's: LoRA r8/alpha16, lr 5e-5, 3 epochs, batch 2 x 8.
    Several GPUs: accelerate launch -m ctscribe train ... or torchrun --nproc_per_node N -m ctscribe train ...

    Example: ctscribe train --data data/ct --model Qwen/Qwen2-VL-2B-Instruct --out runs/lora
    """
    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import train as run_training

    resolved = load_recipe(
        recipe,
        set_ or (),
        dataset_dir=str(data) if data else None,
        output_dir=str(out) if out else None,
        model_name_or_path=model,
    )
    final = run_training(resolved, resume=resume)
    typer.echo(f"wrote {final}")


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the fixtures and outputs (reused when present).")
    ] = Path("build/demo"),
    rows: Annotated[int, typer.Option(min=20, help="Rows in the phantom data set.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed for the fixtures.")] = 0,
    max_steps: Annotated[int, typer.Option(min=1, help="Training steps (300 learns the body region).")] = 300,
) -> None:
    """Run ctscribe offline on its built-in fixtures: prepare, train, and what the model learned.

    No downloads; a few minutes on 2 CPU cores.
    """
    from ctscribe.demo import run_demo

    run_demo(out, rows=rows, seed=seed, max_steps=max_steps)


def main() -> None:
    """Console entry point: expected failures (bad paths, bad values) print one clear line, no traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("ctscribe").setLevel(logging.INFO)  # ours at INFO; libraries' chatter stays quiet
    try:
        app()
    except (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as error:  # RecipeError too
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
