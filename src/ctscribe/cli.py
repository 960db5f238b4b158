"""The `ctscribe` command: one sub-command per pipeline step.

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so that
`ctscribe --help` answers at once.
"""

from __future__ import annotations

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
) -> None:
    """Build a phantom CT data set as parquet shards in MedTrinity-25M's schema (image, id, caption).

    Writes OUT/25M_demo/train-*.parquet, laid out like a download of the Hub's 25M_demo subset, and
    OUT/truth.jsonl with each row's known facts (modality, region, lesion, side, size, boxes, and
    which rows are corrupt, captionless or duplicates).
    """
    from ctscribe.fixtures.phantom import build_phantom, read_truth

    build_phantom(out, rows=rows, seed=seed, rows_per_shard=rows_per_shard)
    truth = read_truth(out)
    ct = sum(t.modality == "CT" for t in truth)
    typer.echo(f"wrote {len(truth)} phantom rows ({ct} CT) to {out}")


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the fixtures and outputs (reused when present).")
    ] = Path("build/demo"),
    rows: Annotated[int, typer.Option(min=20, help="Rows in the phantom data set.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed for the fixtures.")] = 0,
) -> None:
    """Run ctscribe offline on its built-in fixtures: no downloads, a few minutes on 2 CPU cores."""
    from ctscribe.demo import run_demo

    run_demo(out, rows=rows, seed=seed)


def main() -> None:
    """Console entry point: expected failures (bad paths, bad values) print one clear line, no traceback."""
    try:
        app()
    except (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
