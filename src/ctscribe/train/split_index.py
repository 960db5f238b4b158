"""A split file's sample table, measured once per data set and read lazily by every process.

Before step 1 the trainer needs each sample's token count (length-grouped batches) and the reason
it is dropped, if it is (counted in data_stats.json, and kept out of the sampler's order). Measuring
means tokenising every record and opening every image's header: ~4,800 records/s on one core, so
~18 minutes at the ~5.1M CT rows of MedTrinity-25M. Done per process and per restart, that is idle
accelerators and a copy of every record in each rank's memory.

So the table is measured once and kept on disk beside the split, as memory-mapped ``.npy`` arrays::

    DIR/.index/<split>-<key>/offsets.npy       byte offset of each record's line (+ one past the last)
    DIR/.index/<split>-<key>/lengths.npy       tokens of each sample as trained (0 when dropped)
    DIR/.index/<split>-<key>/reasons.npy       -1 kept, else a position in meta.json's "reasons"
    DIR/.index/<split>-<key>/image_tokens.npy  image tokens of each sample (the feature cache's size)
    DIR/.index/<split>-<key>/meta.json         reasons, record count, and the JSON Lines file read

``key`` digests the split file's identity (size, modification time, inode) and everything a length
depends on (the base's family, the tokenizer's vocabulary and rules, the pixel budget,
``cutoff_len``), so a changed file or setting is measured again, never read stale. The first process
to take the folder's file lock measures; the other ranks of the node (or of any node on a shared
file system) wait and read it.

Records are read back one at a time by byte offset: ``prepare`` writes ``train.json`` one record per
line, so the offsets point into the JSON array itself and no second copy exists. A split written
some other way (indented, or on one line) is copied once into ``records.jsonl`` in the index folder.
``train.json``/``val.json``/``test.json`` stay JSON arrays: LLaMA-Factory and evaluate read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from ctscribe.prepare.splits import read_split

INDEX_DIR = ".index"
FORMAT = 1  # bump when the table's meaning changes: older folders are then measured again
ARRAYS = ("offsets", "lengths", "reasons", "image_tokens")


class SplitRecords(Sequence):
    """The records of a JSON Lines (or one-record-per-line JSON array) file, parsed on access.

    Holds only the offsets (memory-mapped): a rank never holds a list of every record.
    """

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path, self.offsets = Path(path), offsets
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        if self._fd is None:  # opened lazily, so each DataLoader worker has its own
            self._fd = os.open(self.path, os.O_RDONLY)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        line = os.pread(self._fd, end - start, start).rstrip().rstrip(b",")
        return json.loads(line)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


@dataclass
class SampleTable:
    """Per record of a split: tokens as trained, why it is dropped (or not), its image tokens."""

    lengths: np.ndarray  # int32
    reasons: np.ndarray  # int16: -1 kept, else an index into ``reason_names``
    image_tokens: np.ndarray  # int64
    reason_names: list[str]

    def head(self, count: int | None) -> SampleTable:
        """The table of the first ``count`` records (``max_samples``); all of them for None."""
        if count is None:
            return self
        return SampleTable(
            self.lengths[:count], self.reasons[:count], self.image_tokens[:count], self.reason_names
        )

    @property
    def kept(self) -> np.ndarray:
        """Positions (in the split) of the samples that are trained."""
        return np.flatnonzero(self.reasons < 0)

    @property
    def dropped(self) -> Counter:
        counts = np.bincount(self.reasons[self.reasons >= 0], minlength=len(self.reason_names))
        return Counter({name: int(n) for name, n in zip(self.reason_names, counts, strict=True) if n})


def measure(records: Iterator[dict], check: Callable[[dict], tuple[int, int] | str]) -> SampleTable:
    """The table of ``records``; ``check`` returns (tokens, image tokens) or the reason to drop."""
    lengths: list[int] = []
    reasons: list[int] = []
    image_tokens: list[int] = []
    names: dict[str, int] = {}
    for record in records:
        result = check(record)
        if isinstance(result, str):
            lengths.append(0)
            image_tokens.append(0)
            reasons.append(names.setdefault(result, len(names)))
        else:
            lengths.append(result[0])
            image_tokens.append(result[1])
            reasons.append(-1)
    return SampleTable(
        np.asarray(lengths, dtype=np.int32),
        np.asarray(reasons, dtype=np.int16),
        np.asarray(image_tokens, dtype=np.int64),
        list(names),
    )


def line_offsets(path: Path) -> np.ndarray | None:
    """Offsets of each record's line if ``path`` is a JSON array written one record per line (as
    ``prepare`` writes it), plus the end of the last; None for any other layout."""
    offsets: list[int] = []
    position = 0
    with open(path, "rb") as handle:
        first = handle.readline()
        if first.strip() != b"[":
            return None
        position = len(first)
        closed = False
        for line in handle:
            stripped = line.strip()
            if closed and stripped:
                return None
            if stripped == b"]":
                closed = True
                offsets.append(position)
            elif stripped:
                if closed or not (line.startswith(b"{") and stripped.rstrip(b",").endswith(b"}")):
                    return None
                offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=np.int64) if closed else None


def _file_identity(path: Path) -> dict:
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def table_key(path: Path, settings: dict) -> str:
    """A digest of the split file's identity and of every setting a sample's length depends on."""
    payload = {"format": FORMAT, "file": _file_identity(path), **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of the tokenizer's vocabulary, merges and rules (what decides token counts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _build(path: Path, folder: Path, check: Callable[[dict], tuple[int, int] | str]) -> None:
    """Measure the split and write the folder (complete, or not at all)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        source = Path(path)
        offsets = line_offsets(path)
        if offsets is None:  # not one record per line: copy it once into JSON Lines
            source = tmp / "records.jsonl"
            with source.open("w", encoding="utf-8") as handle:
                for record in read_split(path):
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            offsets = line_offsets_jsonl(source)
        records = SplitRecords(source, offsets)
        table = measure(iter(records), check)
        arrays = {
            "offsets": offsets,
            "lengths": table.lengths,
            "reasons": table.reasons,
            "image_tokens": table.image_tokens,
        }
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        in_folder = source.parent == tmp
        meta = {"reasons": table.reason_names, "records": len(records), "in_folder": in_folder}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def line_offsets_jsonl(path: Path) -> np.ndarray:
    """Offsets of each line of a JSON Lines file, plus its end."""
    offsets = [0]
    with open(path, "rb") as handle:
        for line in handle:
            offsets.append(offsets[-1] + len(line))
    return np.asarray(offsets, dtype=np.int64)


def load_split(
    path: Path, settings: dict, check: Callable[[dict], tuple[int, int] | str]
) -> tuple[SplitRecords, SampleTable]:
    """The split's lazy records and its table: read from the index, measured first if it has none.

    ``settings`` must name everything ``check`` depends on besides the file (it keys the index).
    """
    path = Path(path)
    if not path.is_file():
        read_split(path)  # raises the clear "is --data a folder written by `ctscribe prepare`?" error
    folder = path.parent / INDEX_DIR / f"{path.stem}-{table_key(path, settings)}"
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if not (folder / "meta.json").is_file():  # another rank may have built it meanwhile
                _build(path, folder, check)
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    records = SplitRecords(folder / "records.jsonl" if meta["in_folder"] else path, arrays["offsets"])
    table = SampleTable(arrays["lengths"], arrays["reasons"], arrays["image_tokens"], meta["reasons"])
    return records, table
