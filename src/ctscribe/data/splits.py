"""Train/val/test assignment that never leaks and never moves.

A row's split is a pure function of its group key (the patient or study where the source names one,
otherwise the row's own id): slices of one patient land in one split, and adding more source rows
never moves an existing row, so a test row can never drift into training between releases.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SPLITS = ("train", "val", "test")


def assign_split(group: str, val_fraction: float, test_fraction: float) -> str:
    """``test`` for the lowest ``test_fraction`` of the group-hash range, then ``val``, then ``train``."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be in [0, 1) and sum to less than 1")
    digest = hashlib.sha256(f"split:{group}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def read_split(path: Path) -> list[dict]:
    """A prepared split file's records (a JSON array), with a clear error for anything else."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = f"{path} not found: is --data a folder written by `ctscribe prepare`?"
        raise FileNotFoundError(message) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rerun `ctscribe prepare`") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON array of records")
    return records
