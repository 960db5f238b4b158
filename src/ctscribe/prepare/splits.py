"""Train/val/test assignment that never leaks and never moves.

A row's split is a pure function of its group key (the patient where the file name names one,
otherwise a documented fallback, see `split_key`): slices of one patient land in one split, and
adding more source rows never moves an existing row, so a test row can never drift into training
between releases.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

SPLITS = ("train", "val", "test")


class SplitKey(NamedTuple):
    key: str  # rows with one key share a split
    rule: str  # which rule gave it, reported per source in stats.json ``split_by``


# Patient identifiers in the full release's flat file names (the original paths flattened with
# underscores). Each rule is anchored on the naming of the data set it names, wherever the name
# appears, so one patient keys alike under every `source` that repackages it (ULS23 reuses
# DeepLesion, for one).
# Forms, and where they are documented:
#   DeepLesion  ``{patient}_{study}_{series}_{slice}`` (6/2/2/3 digits; the data set's README), in the
#               release e.g. ``..._DeepLesion_Images_png_17_Images_png_001087_10_01_184__98.3207_...jpg``
#   CT-RATE     ``{train|valid}_{patient}_{scan}_{reconstruction}``, masks prefixed ``seg_``; in the
#               release e.g. ``seg_train_558_a_2-right lung.nii-105.jpg``; train_558 and valid_558
#               are two patients; only under source ct_rate (the form alone is too generic)
#   CQ500       ``CQ500-CT-{n}`` (through bhx), e.g. ``..._bhx-brain-bounding-box_CQ500-CT-22_CQ500CT22 ...``
#   FLARE       nnU-Net case ids ``FLARE22_Tr_0001_0000.nii.gz`` / ``FLARE23_0001_0000.nii.gz``
#               (case, then channel); not yet seen flattened in the release
#   KiTS        ``case_00000`` (the challenge's case folders); only under a source or name saying KiTS,
#               since ``case_NNNNN`` alone is too common a form to claim
@dataclass(frozen=True)
class _PatientRule:
    name: str
    where: re.Pattern[str]  # applies where the row's source or its file name matches this
    patient: re.Pattern[str]  # group 1: the patient
    prefix: str  # names the data set in the key, so equal numbers of two data sets never merge


_PATIENT_RULES = (
    _PatientRule(
        "DeepLesion patient",
        re.compile(r"deeplesion", re.I),
        re.compile(r"(?<!\d)(\d{6})_\d{2}_\d{2}_\d{3}(?!\d)"),
        "DeepLesion-",
    ),
    _PatientRule(
        "CT-RATE patient",
        re.compile(r"^ct_rate$"),
        re.compile(r"^(?:seg_)?((?:train|valid)_\d+)_[a-z]+_\d+"),
        "CT-RATE-",
    ),
    _PatientRule("CQ500 patient", re.compile(r"CQ500"), re.compile(r"(CQ500-CT-\d+)"), ""),
    _PatientRule(
        "FLARE case", re.compile(r"flare\d{2}", re.I), re.compile(r"(FLARE\d{2}(?:_T[rs])?_\d{4})(?!\d)"), ""
    ),
    _PatientRule(
        "KiTS case", re.compile(r"kits", re.I), re.compile(r"(?<![A-Za-z0-9])(case_\d{5})(?!\d)"), "KiTS-"
    ),
)
_IMAGE_SUFFIX = re.compile(r"\.(?:jpe?g|png|bmp|tiff?|dcm|nii(?:\.gz)?)$", re.I)
_TRAILING_NUMBER = re.compile(r"[_\- .]*(?:slice)?\d+$", re.I)


def split_key(file_name: str | None, source: str | None, row_id: str) -> SplitKey:
    """The group a row is split by: its patient where its file name names one.

    Rules, first match wins: the patient rules above (the rule applies where the row's ``source``
    or its file name says the data set, and its patient pattern is found); else a file name with
    folders keys by its folder (``study/045.png`` -> ``study``); else a flat name keys by itself
    without its image suffix and trailing slice number (``case_0042_117.png`` -> ``case_0042``),
    which keeps the slices of one volume together only where the slice number ends the name; a row
    without a file name (25M_demo) keys by its id, so nothing groups its rows.
    """
    if file_name is None:
        return SplitKey(row_id, "row id")
    for rule in _PATIENT_RULES:
        if rule.where.search(source or "") or rule.where.search(file_name):
            found = rule.patient.search(file_name)
            if found:
                return SplitKey(rule.prefix + found.group(1), rule.name)
    path = PurePosixPath(file_name)
    if len(path.parts) > 1:
        return SplitKey(str(path.parent), "folder")
    stem = _IMAGE_SUFFIX.sub("", path.name)
    return SplitKey(_TRAILING_NUMBER.sub("", stem) or stem, "file name without slice number")


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
