"""Where MedTrinity-25M rows come from: local parquet shards, the Hub (streamed), or the full release.

Every source hands out *units*: slices of rows that `prepare` processes, checkpoints and shards as
one piece. A unit's key sorts in source order, so (unit key, row) is a global order that one run,
a resumed run and N merged shard runs all agree on. Units are small (a parquet row group, or a
chunk of a stream), which keeps memory constant and bounds the work a killed run repeats.
"""

from __future__ import annotations

import functools
import glob
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ctscribe.atomic import atomic_write_bytes

DEMO_COLUMNS = ("image", "id", "caption")
FULL_COLUMNS = ("file_name", "caption", "source")
STREAM_CHUNK_ROWS = 1000


@dataclass(frozen=True)
class SourceRow:
    """One source row, image still encoded (decoding happens in the worker, with its errors)."""

    row: int  # position within its unit
    id: str
    caption: str | None
    image: bytes | None
    image_error: str | None = None  # why ``image`` is None (missing file, ...)
    source: str | None = None
    file_name: str | None = None  # the full release's name (also the id); splits key by its patient


@dataclass(frozen=True)
class Unit:
    key: str  # sorts in source order
    n_rows: int | None  # known in advance for parquet (from its metadata), not for streams
    load: Callable[[], list[SourceRow]] = field(compare=False)  # picklable: runs in a worker


def _image_bytes(cell: object) -> bytes | None:
    """The bytes of a parquet image cell: the Hub's ``{bytes, path}`` struct or plain binary."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return cell if isinstance(cell, bytes | bytearray) and cell else None


def _read_demo_row_group(path: str, row_group: int, stop: int | None) -> list[SourceRow]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read_row_group(row_group, columns=list(DEMO_COLUMNS))
    rows = table.slice(0, stop).to_pylist() if stop is not None else table.to_pylist()
    stem = Path(path).stem
    return [
        SourceRow(
            row=i,
            id=str(r["id"]) if r["id"] else f"{stem}-{row_group}-{i}",
            caption=r["caption"],
            image=(data := _image_bytes(r["image"])),
            image_error=None if data else "no image bytes in the row",
        )
        for i, r in enumerate(rows)
    ]


def _read_full_row_group(path: str, row_group: int, stop: int | None, image_root: str) -> list[SourceRow]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read_row_group(row_group, columns=list(FULL_COLUMNS))
    rows = table.slice(0, stop).to_pylist() if stop is not None else table.to_pylist()
    out = []
    for i, r in enumerate(rows):
        name = str(r["file_name"])
        image, error = None, None
        try:
            image = (Path(image_root) / name).read_bytes()
        except FileNotFoundError:
            error = "missing image file"
        except OSError as exc:
            error = f"unreadable image file ({exc.strerror or type(exc).__name__})"
        out.append(SourceRow(i, name, r["caption"], image, error, r["source"], name))
    return out


def find_parquet_files(spec: str) -> list[Path]:
    """Parquet files of a folder (searched recursively), a single file, or a glob, in sorted order."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True))
    if not files:
        raise FileNotFoundError(f"no parquet files found at {spec}")
    return files


class ParquetSource:
    """Local parquet shards: the 25M_demo layout (image, id, caption) or the full release's metadata
    (file_name, caption, source) with the images in a folder. One unit per row group."""

    def __init__(self, files: list[Path], image_root: Path | None = None) -> None:
        import pyarrow.parquet as pq

        self.files = files
        self.image_root = image_root
        required = FULL_COLUMNS if image_root is not None else DEMO_COLUMNS
        for file in files:
            try:
                names = set(pq.read_schema(file).names)
            except Exception as exc:  # pyarrow raises several types for a file that is not parquet
                raise ValueError(f"{file} is not a readable parquet file: {exc}") from None
            missing = [c for c in required if c not in names]
            if missing:
                raise ValueError(
                    f"{file} lacks column(s) {', '.join(missing)} (has {', '.join(sorted(names))}); "
                    f"expected {', '.join(required)}"
                )

    @property
    def description(self) -> str:
        return f"{len(self.files)} parquet file(s) under {os.path.commonpath([str(f) for f in self.files])}"

    def units(self, limit: int | None = None) -> Iterator[Unit]:
        import pyarrow.parquet as pq

        remaining = limit
        for file_index, file in enumerate(self.files):
            metadata = pq.ParquetFile(file).metadata
            for group in range(metadata.num_row_groups):
                n = metadata.row_group(group).num_rows
                stop = None if remaining is None or remaining >= n else remaining
                if self.image_root is None:
                    load = functools.partial(_read_demo_row_group, str(file), group, stop)
                else:
                    load = functools.partial(
                        _read_full_row_group, str(file), group, stop, str(self.image_root)
                    )
                yield Unit(f"{file_index:05d}-{group:05d}", n if stop is None else stop, load)
                if remaining is not None:
                    remaining -= n if stop is None else stop
                    if remaining <= 0:
                        return


class StreamingSource:
    """A `datasets` stream, the way the Hub's 25M_demo is read without downloading it first.

    ``path``/``name``/``data_files`` go to ``datasets.load_dataset(..., streaming=True)``: a Hub id and
    config for the real data (the token comes from ``HF_TOKEN`` or ``hf auth login``), or ``"parquet"``
    with local files, which is how tests exercise this very code. Images stay undecoded.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        data_files: list[str] | None = None,
        token: str | None = None,
    ) -> None:
        self.path, self.name, self.data_files, self.token = path, name, data_files, token

    @property
    def description(self) -> str:
        return f"stream of {self.path}" + (f" ({self.name})" if self.name else "")

    def _stream(self):
        from datasets import Image, load_dataset

        try:
            dataset = load_dataset(
                self.path,
                self.name,
                data_files=self.data_files,
                split="train",
                streaming=True,
                token=self.token,
            )
        except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"{self.path} is not a local path, and it could not be opened as a Hugging Face data set "
                f"({type(exc).__name__}: {exc}). Check the path, or the Hub id, your network and HF_TOKEN."
            ) from None
        columns = dataset.column_names or list(dataset.features or [])
        missing = [c for c in DEMO_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{self.description} lacks column(s) {', '.join(missing)}; expected image, id, caption"
            )
        return dataset.cast_column("image", Image(decode=False))

    def units(self, limit: int | None = None) -> Iterator[Unit]:
        chunk: list[SourceRow] = []
        index = 0
        for position, record in enumerate(self._stream()):
            if limit is not None and position >= limit:
                break
            data = _image_bytes(record["image"])
            chunk.append(
                SourceRow(
                    row=len(chunk),
                    id=str(record["id"]) if record["id"] else f"stream-{position}",
                    caption=record["caption"],
                    image=data,
                    image_error=None if data else "no image bytes in the row",
                )
            )
            if len(chunk) == STREAM_CHUNK_ROWS:
                yield Unit(f"s{index:08d}", len(chunk), functools.partial(list, chunk))
                chunk, index = [], index + 1
        if chunk:
            yield Unit(f"s{index:08d}", len(chunk), functools.partial(list, chunk))


@dataclass
class ExtractionReport:
    archives: int = 0
    extracted: int = 0
    truncated: list[str] = field(default_factory=list)


def _safe_member_path(dest: Path, name: str) -> Path | None:
    """Where an archive member may be written: never outside ``dest`` (no absolute paths, no ``..``)."""
    parts = PurePosixPath(name.lstrip("./")).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(name).is_absolute():
        return None
    return dest.joinpath(*parts)


def extract_archives(archives: list[Path], dest: Path, wanted: Callable[[str], bool]) -> ExtractionReport:
    """Stream the full release's ``.tar.zst`` archives into ``dest``, keeping only ``wanted`` members.

    Archives are read sequentially (a tar in a zstd stream has no index to seek in). A truncated or
    corrupt archive keeps what was extracted before the damage and is reported, not fatal: the
    images it lost become 'missing image file' skips. Each finished archive leaves a marker, so a
    rerun skips it; each file is written atomically, so a killed run leaves no half image.
    """
    import zstandard

    report = ExtractionReport()
    dest.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        report.archives += 1
        marker = dest / f".done-{archive.name}"
        if marker.exists():
            status = marker.read_text().strip()
            if status.startswith("truncated"):
                report.truncated.append(archive.name)
            continue
        status = "complete"
        try:
            with (
                archive.open("rb") as raw,
                zstandard.ZstdDecompressor().stream_reader(raw) as reader,
                tarfile.open(fileobj=reader, mode="r|") as tar,
            ):
                for member in tar:
                    if not member.isfile() or not wanted(member.name.lstrip("./")):
                        continue
                    target = _safe_member_path(dest, member.name)
                    if target is None or target.exists():
                        continue
                    source = tar.extractfile(member)
                    if source is None:
                        continue
                    atomic_write_bytes(target, source.read())
                    report.extracted += 1
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
            status = f"truncated: {type(exc).__name__}: {exc}"
            report.truncated.append(archive.name)
        marker.write_text(status + "\n")
    return report


def is_local(spec: str) -> bool:
    return Path(spec).exists() or any(ch in spec for ch in "*?[")


def find_archives(images: str) -> list[Path]:
    """The ``.tar.zst`` archives at ``images`` (a folder or a glob), in sorted order; [] if none."""
    path = Path(images)
    if path.is_dir():
        return sorted(path.glob("*.tar.zst"))
    return sorted(Path(p) for p in glob.glob(images) if p.endswith(".tar.zst"))


def metadata_names(files: list[Path], keep: Callable[[str, str | None, str], bool]) -> set[str]:
    """File names of full-release metadata rows that ``keep(caption, source, file_name)`` accepts."""
    import pyarrow.parquet as pq

    names: set[str] = set()
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(columns=list(FULL_COLUMNS), batch_size=65536):
            for name, caption, source in zip(
                *(batch.column(c).to_pylist() for c in FULL_COLUMNS), strict=True
            ):
                if keep(caption or "", source, str(name)):
                    names.add(str(name))
    return names
