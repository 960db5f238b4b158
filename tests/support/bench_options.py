"""Command-line options that several benchmarks in bench/ share."""

from __future__ import annotations

import argparse

from ctscribe.models import DEFAULT_FAMILY, FAMILIES


def add_families_option(parser: argparse.ArgumentParser) -> None:
    """``--families MODEL_TYPE ...``: the base families to run, one after another (default: the
    default family alone), each by its config.json ``model_type``."""
    parser.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=[DEFAULT_FAMILY.model_type],
        metavar="MODEL_TYPE",
        help=f"base families by model_type: {', '.join(FAMILIES)} (default: {DEFAULT_FAMILY.model_type})",
    )
