"""`ctscribe prepare`: MedTrinity-25M rows -> clean CT fine-tuning data in LLaMA-Factory's layout.

Two stages, so that one run, a resumed run and N merged shard runs give the same output:

1. **Stage** (parallel, per unit): clean the caption, keep CT only, decode the image through the one
   image path, hash it, save it, and write one staging record per row to
   ``DIR/.staging/units/<unit>.jsonl`` (atomically, when the unit is done). A killed run resumes at
   the first unit without a staging file; staging written with other options, or in an older record
   format (:data:`STAGING_FORMAT`), is refused with the reason rather than mixed in.
2. **Finalize** (one pass over the staging records in source order): drop exact and near-duplicate
   images after their first occurrence, assign splits, choose prompts, ground answers in the region
   of interest's box (:mod:`ctscribe.prepare.grounding`), and write ``train.json``,
   ``val.json``, ``test.json``, ``dataset_info.json``, ``stats.json`` and the dataset card.

Each skipped row has exactly one reason, checked in this order: empty caption, not CT, bad image,
duplicate; so ``read == kept + sum(skipped)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from ctscribe.atomic import atomic_write, atomic_write_text
from ctscribe.conversation.boxes import GridBox
from ctscribe.ct.images import BadImageError, prepare_image
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.prepare.captions import clean_caption
from ctscribe.prepare.dedupe import NearDuplicateIndex, image_hash
from ctscribe.prepare.modality import classify_modality
from ctscribe.prepare.options import FinalizeOptions, ReadOptions, StageOptions
from ctscribe.prepare.records import dataset_info, sft_record
from ctscribe.prepare.sources import ParquetSource, SourceRow, Unit
from ctscribe.prepare.splits import SPLITS, assign_split, split_key

SKIP_REASONS = ("empty_caption", "not_ct", "bad_image", "duplicate")
STAGING = ".staging"
# Version of the staging record layout; a resumed run refuses staging of another format. 2: ``roi_box``
# (the green box on the 0-1000 grid of the saved image, or null), which grounded answers need.
STAGING_FORMAT = 2
# Staging records deduplicated together: the index walk is vectorised over a block, and a block's
# rows are compared with each other directly (block^2 / 2 distances), so a few hundred.
DEDUPE_BLOCK = 256
log = logging.getLogger(__name__)


def grounding_mode(options: FinalizeOptions, roi_box: str) -> str:
    """``on``, or why answers carry no boxes: stats.json's and the dataset card's ``grounding``.

    With the green box left in the image the model could copy it instead of finding the region:
    grounding then teaches nothing, so ``--roi-box keep`` turns it off.
    """
    if not options.grounding:
        return "off (--no-grounding)"
    if roi_box == "keep":
        return "off (--roi-box keep: the box stays visible in the image)"
    return "on"


# ---------------------------------------------------------------------------------------------
# Stage 1


def image_relpath(row_id: str) -> str:
    """``images/<2 hex>/<id>.png``: fanned out so millions of files never share one folder."""
    digest = hashlib.sha1(row_id.encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", row_id)[:120]
    if safe != row_id:  # sanitising could map two ids onto one name; the digest keeps them apart
        safe = f"{safe}-{digest[:10]}"
    return f"images/{digest[:2]}/{safe}.png"


def _save_png(image, path: Path) -> None:
    """Write atomically; grey images (R == G == B, as most CT is) as one-channel PNG, a third the size.

    PNG because it is lossless: the source images are already compressed once.
    """
    from PIL import ImageChops

    r, g, b = image.split()
    grey = not ImageChops.difference(r, g).getbbox() and not ImageChops.difference(r, b).getbbox()
    atomic_write(path, lambda tmp: (r if grey else image).save(tmp, format="PNG"))


def stage_row(row: SourceRow, out: Path, options: StageOptions) -> dict:
    """The staging record of one row: ``status`` is ``ok`` or the reason it is skipped."""
    record: dict = {"row": row.row, "id": row.id}
    caption = clean_caption(row.caption or "")
    if not caption:
        return {**record, "status": "empty_caption"}
    modality = classify_modality(caption, row.source, row.file_name)
    record["modality"] = modality
    if options.modality == "ct" and modality != "CT":
        return {**record, "status": "not_ct"}
    if row.image is None:
        return {**record, "status": "bad_image", "detail": row.image_error or "no image"}
    try:
        # Prepare runs before a base is chosen: images are sized on the default family's grid, and
        # training fits them to its own model's grid (a no-op when the two agree).
        prepared = prepare_image(row.image, options.image, grid=DEFAULT_FAMILY.grid)
    except BadImageError as error:
        return {**record, "status": "bad_image", "detail": str(error)}
    relpath = image_relpath(row.id)
    _save_png(prepared.image, out / relpath)
    return {
        **record,
        "status": "ok",
        "caption": caption,
        "image": relpath,
        "hash": image_hash(prepared.full_frame),
        "source": row.source,
        "file_name": row.file_name,
        "roi_box_found": prepared.roi_box is not None,
        "roi_box": None if prepared.roi_grid is None else prepared.roi_grid.as_list(),
        "image_tokens": prepared.image_tokens,
    }


def _unit_path(out: Path, key: str) -> Path:
    return out / STAGING / "units" / f"{key}.jsonl"


def stage_unit(unit: Unit, out: Path, options: StageOptions) -> int:
    """Stage every row of a unit; the unit's file appears only once all its rows are done."""
    records = [stage_row(row, out, options) for row in unit.load()]
    path = _unit_path(out, unit.key)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)


def _stage_unit_star(args: tuple[Unit, Path, StageOptions]) -> int:
    return stage_unit(*args)


def _check_format(folder: Path, fingerprint: dict) -> None:
    """Refuse staging records of an older layout: they lack what finalize now reads."""
    found = fingerprint.get("format", 1)
    if found != STAGING_FORMAT:
        raise ValueError(
            f"{folder} holds staging records of format {found}, and this ctscribe needs format "
            f"{STAGING_FORMAT} (records with the ROI box); restage: delete {folder / STAGING} and rerun, "
            "or choose a new --out"
        )


def _check_options(out: Path, fingerprint: dict) -> None:
    """Refuse to mix staging records made with other options (or another format) into one output."""
    path = out / STAGING / "options.json"
    if path.exists():
        previous = json.loads(path.read_text())
        _check_format(out, previous)
        if previous != fingerprint:
            changed = sorted(
                k for k in fingerprint.keys() | previous.keys() if previous.get(k) != fingerprint.get(k)
            )
            raise ValueError(
                f"{out} holds a run with other options ({', '.join(changed)} differ); "
                "rerun with the same options to resume, or choose a new --out"
            )
    else:
        atomic_write_text(path, json.dumps(fingerprint, indent=2, sort_keys=True))


def stage(
    units: Iterable[Unit],
    out: Path,
    options: StageOptions,
    *,
    source: str,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Stage the shard's units that are not staged yet. Returns counts of units done and skipped."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"--shard {index}/{count}: the index must be in 0..{count - 1}")
    fingerprint = {
        "format": STAGING_FORMAT,
        "source": source,
        "stage": _jsonable(asdict(options)),
        "shard": [index, count],
    }
    _check_options(out, fingerprint)
    resumed = 0

    def todo() -> Iterator[tuple[Unit, Path, StageOptions]]:
        nonlocal resumed
        for position, unit in enumerate(units):
            if position % count != index:
                continue
            if _unit_path(out, unit.key).exists():
                resumed += 1
                if progress and unit.n_rows:
                    progress(unit.n_rows)
                continue
            yield unit, out, options

    done = 0
    if workers <= 1:
        for args in todo():
            rows = stage_unit(*args)
            done += 1
            if progress:
                progress(rows)
    else:
        # spawn, not fork: the parent may hold threads (progress bar, datasets' streaming) that a
        # forked child would inherit in a broken state.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for rows in pool.imap_unordered(_stage_unit_star, todo()):
                done += 1
                if progress:
                    progress(rows)
    atomic_write_text(out / STAGING / "complete.json", json.dumps({"shard": [index, count]}))
    return {"units_staged": done, "units_resumed": resumed}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------------------------------------
# Stage 2


def iter_staged(out: Path) -> Iterator[dict]:
    """All staging records in source order: unit files sorted by key, rows in file order."""
    for path in sorted((out / STAGING / "units").glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def _blocks(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive lists of ``size`` items (the last may be shorter); ``itertools.batched`` from 3.12."""
    while block := list(itertools.islice(items, size)):
        yield block


def count_turns(record: dict, counts: Counter) -> None:
    """Add a record's dialogue turns to ``counts`` (by topic, and closed answers by yes/no)."""
    for entry in record.get("dialogue", ())[1:]:
        counts["turns", entry["topic"]] += 1
        if entry["expected"] is not None:
            counts["closed", entry["expected"]] += 1


def dialogue_stats(counts: Counter) -> dict:
    """stats.json's ``dialogue`` block: follow-up turns per topic, closed answers per yes/no."""
    return {
        "turns": {topic: n for (kind, topic), n in sorted(counts.items()) if kind == "turns"},
        "closed": {answer: counts["closed", answer] for answer in ("yes", "no")},
    }


class JsonArrayWriter:
    """Streams records into a JSON array (LLaMA-Factory's format) without holding them all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        self.handle = os.fdopen(fd, "w", encoding="utf-8")
        self.handle.write("[")
        self.count = 0

    def write(self, record: dict) -> None:
        self.handle.write(("\n" if self.count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        self.count += 1

    def commit(self) -> None:
        self.handle.write("\n]\n")
        self.handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.handle.close()
        Path(self.tmp).unlink(missing_ok=True)


def finalize(out: Path, options: FinalizeOptions) -> dict:
    """Deduplicate, split and write the data set from the staging records; returns the stats."""
    index = NearDuplicateIndex()
    skipped = Counter({reason: 0 for reason in SKIP_REASONS})
    modalities: Counter[str] = Counter()
    bad_reasons: Counter[str] = Counter()
    duplicate_kinds: Counter[str] = Counter()
    turn_counts: Counter[tuple[str, str]] = Counter()
    unreferenced_images: list[str] = []
    read = kept = roi_found = grounded = token_sum = 0
    split_rules: Counter[tuple[str, str]] = Counter()
    example: dict | None = None
    staging_options = json.loads((out / STAGING / "options.json").read_text())
    grounding = grounding_mode(options, staging_options["stage"]["image"]["roi_box"])

    writers = {split: JsonArrayWriter(out / f"{split}.json") for split in SPLITS}
    try:
        for block in _blocks(iter_staged(out), DEDUPE_BLOCK):
            staged_ok = [record for record in block if record["status"] == "ok"]
            found = index.add_first_occurrences(
                [record["id"] for record in staged_ok], [record["hash"] for record in staged_ok]
            )
            duplicate_of = {id(record): match for record, match in zip(staged_ok, found, strict=True)}
            for record in block:
                read += 1
                if "modality" in record:
                    modalities[record["modality"]] += 1
                status = record["status"]
                match = duplicate_of.get(id(record))
                if match is not None:
                    status = "duplicate"
                    duplicate_kinds[match[0]] += 1
                    if match[0] == "near_duplicate":
                        # Another id, so another file; a same-id duplicate shares the kept row's file.
                        unreferenced_images.append(record["image"])
                if status != "ok":
                    skipped[status] += 1
                    if status == "bad_image":
                        bad_reasons[record.get("detail", "unknown").split(":")[0]] += 1
                    continue
                key = split_key(record.get("file_name"), record.get("source"), record["id"])
                split_rules[record.get("source") or "(none)", key.rule] += 1
                split = assign_split(key.key, options.val_fraction, options.test_fraction)
                box = GridBox(*record["roi_box"]) if grounding == "on" and record["roi_box"] else None
                sft = sft_record(
                    record["id"],
                    record["image"],
                    record["caption"],
                    split,
                    lang=options.lang,
                    dialogue=options.dialogue,
                    box=box,
                )
                count_turns(sft, turn_counts)
                writers[split].write(sft)
                example = example or sft
                kept += 1
                roi_found += record["roi_box_found"]
                grounded += box is not None
                token_sum += record["image_tokens"]
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    for relpath in unreferenced_images:
        (out / relpath).unlink(missing_ok=True)

    stats = {
        "read": read,
        "kept": kept,
        "skipped": dict(skipped),
        "splits": {split: writers[split].count for split in SPLITS},
        "roi_box_found": roi_found,
        "grounding": grounding,
        "grounded": grounded,
        "mean_image_tokens": round(token_sum / kept, 2) if kept else 0.0,
        "modalities_seen": dict(modalities.most_common()),
        "bad_image_reasons": dict(bad_reasons.most_common()),
        "duplicates": dict(duplicate_kinds),
        "split_by": split_by_source(split_rules),
        "source": staging_options["source"],
        "options": {**staging_options["stage"], **asdict(options)},
    }
    if options.dialogue:
        stats["dialogue"] = dialogue_stats(turn_counts)
    archives = out / STAGING / "archives.json"
    if archives.exists():
        stats["archives"] = json.loads(archives.read_text())
    atomic_write_text(out / "dataset_info.json", json.dumps(dataset_info(options.name), indent=2))
    atomic_write_text(out / "README.md", dataset_card(stats, example))
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False))
    return stats


def split_by_source(rules: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """``{source: {rule: kept rows}}``: what each source's rows were split by (`split_key`'s rules)."""
    by_source: dict[str, dict[str, int]] = {}
    for (source, rule), rows in sorted(rules.items()):
        by_source.setdefault(source, {})[rule] = rows
    return by_source


def dataset_card(stats: dict, example: dict | None) -> str:
    """``DIR/README.md``: what is in the data set, how it was filtered, and what it is for."""
    options = stats["options"]
    side = DEFAULT_FAMILY.grid.token_side
    lines = [
        f"# {options['name']}: CT image descriptions from MedTrinity-25M",
        "",
        f"Prepared by `ctscribe prepare` from {stats['source']}.",
        "",
        "## Counts",
        "",
        "| | rows |",
        "|---|---|",
        f"| read | {stats['read']} |",
        f"| kept | {stats['kept']} |",
        *(f"| skipped: {reason.replace('_', ' ')} | {n} |" for reason, n in stats["skipped"].items()),
        *(f"| split {split} | {n} |" for split, n in stats["splits"].items()),
        "",
        "Modalities recognised among rows with a caption: "
        + (", ".join(f"{m} {n}" for m, n in stats["modalities_seen"].items()) or "none")
        + ".",
        f"Green region-of-interest boxes found in kept images: {stats['roi_box_found']} "
        f"({'inpainted away' if options['image']['roi_box'] == 'remove' else 'kept'}).",
        f"Grounded answers (the box, on the 0-1000 grid of the saved image, after the caption's "
        f"region-of-interest phrase): {stats['grounded']}; grounding {stats['grounding']}.",
        f"Mean image tokens per kept image: {stats['mean_image_tokens']}.",
        "",
        "## Filters and processing",
        "",
        "- Modality: "
        + ("CT only, recognised from the caption and source." if options["modality"] == "ct" else "all."),
        "- Captions: whitespace normalised, leftovers of the generation prompt (bounding-box wording) "
        "removed.",
        f"- Images: RGB, pixel budget {options['image']['max_pixels']} pixels ({DEFAULT_FAMILY.name}: one "
        f"token per {side}x{side}), background crop "
        f"{'on' if options['image']['crop_background'] else 'off'}, saved as PNG.",
        "- Duplicates: exact and near-duplicate images (re-encoded or resized) dropped after their first "
        "occurrence, by perceptual hash.",
        f"- Splits: val {options['val_fraction']}, test {options['test_fraction']}, keyed per source by "
        + "; ".join(
            f"{source}: " + ", ".join(f"{rule} ({rows} rows)" for rule, rows in by_rule.items())
            for source, by_rule in stats["split_by"].items()
        )
        + "; a row's split never changes when rows are added.",
    ]
    rules = {rule for by_rule in stats["split_by"].values() for rule in by_rule}
    if "file name without slice number" in rules:
        lines.append(
            "  Rows of sources whose file names name no known patient are grouped by their name without "
            "its trailing slice number: slices of one volume stay together, but two volumes of one patient "
            "may fall into different splits."
        )
    if "row id" in rules:
        lines.append(
            "  The source does not name patients or studies (MedTrinity-25M's 25M_demo), so slices of one "
            "patient may fall into different splits; near-duplicate removal limits, but cannot rule out, "
            "leakage."
        )
    lines += [
        f"- Prompts: language {options['lang']}; two prompts per language appear in the test split only.",
        *(
            [
                "- Dialogue: each description is followed by a clinician's follow-up questions answered "
                f"from the caption only; follow-up turns {stats['dialogue']['turns']}, closed answers "
                f"{stats['dialogue']['closed']}.",
            ]
            if options.get("dialogue")
            else []
        ),
        "",
        "## Use",
        "",
        "LLaMA-Factory: `--dataset_dir DIR --dataset "
        f"{options['name']} --eval_dataset {options['name']}_val`. ctscribe: `ctscribe train --data DIR`.",
        "",
        "Models trained on this data assist clinicians; their output is not a diagnosis. MedTrinity-25M's "
        "captions were generated by a model and can be wrong.",
    ]
    if example is not None:
        lines += [
            "",
            "## Example record",
            "",
            "```json",
            json.dumps(example, indent=2, ensure_ascii=False),
            "```",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Merge


def merge_shards(shard_dirs: list[Path], out: Path, options: FinalizeOptions) -> dict:
    """Join the staging outputs of ``prepare --shard I/N`` runs into ``out`` and finalize.

    Finalize sees the same records in the same order as a single run would, so the result is the
    same data set.
    """
    fingerprints = []
    for shard_dir in shard_dirs:
        if not (shard_dir / STAGING / "complete.json").exists():
            raise ValueError(
                f"{shard_dir} is not a finished prepare shard (rerun its prepare command to finish it)"
            )
        fingerprints.append(json.loads((shard_dir / STAGING / "options.json").read_text()))
        _check_format(shard_dir, fingerprints[-1])
    counts = {tuple(f["shard"])[1] for f in fingerprints}
    indices = sorted(f["shard"][0] for f in fingerprints)
    if len(counts) != 1 or indices != list(range(next(iter(counts)))):
        raise ValueError(
            f"need each shard 0..N-1 of one run exactly once; got {[f['shard'] for f in fingerprints]}"
        )
    if any({**f, "shard": None} != {**fingerprints[0], "shard": None} for f in fingerprints):
        raise ValueError("the shards were prepared with different sources or options")
    if out.resolve() in {d.resolve() for d in shard_dirs}:
        raise ValueError("--out must be a new folder, not one of the shards")

    merged = {**fingerprints[0], "shard": [0, 1]}
    _check_options(out, merged)
    for shard_dir in shard_dirs:
        for path in sorted((shard_dir / STAGING / "units").glob("*.jsonl")):
            link_or_copy(path, _unit_path(out, path.stem))
        for image in (shard_dir / "images").rglob("*.png"):
            link_or_copy(image, out / image.relative_to(shard_dir))
    atomic_write_text(out / STAGING / "complete.json", json.dumps({"shard": [0, 1]}))
    return finalize(out, options)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link when on the same file system (no extra disk for millions of images), else copy."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ---------------------------------------------------------------------------------------------
# The whole step, as the CLI runs it


def open_source(
    spec: str, out: Path, config: str, images: str | None, token: str | None, options: StageOptions
):
    """A source for ``--source``: local parquet (25M_demo layout), the Hub (streamed), or the full
    release (metadata parquet + an image folder or ``.tar.zst`` archives, extracted under ``out``)."""
    from ctscribe.prepare.sources import (
        StreamingSource,
        extract_archives,
        find_archives,
        find_parquet_files,
        is_local,
        metadata_names,
    )

    if config == "25M_full":
        if not is_local(spec):
            raise ValueError(
                "the full release is read from local files: download its metadata parquet and image "
                "archives first (see docs/PREPARE.md), then pass the metadata as --source"
            )
        if images is None:
            raise ValueError(
                "--config 25M_full needs --images: the folder of extracted images or of .tar.zst archives"
            )
        files = find_parquet_files(spec)
        archives = find_archives(images)
        image_root = Path(images)
        if archives:
            image_root = out / ".cache" / "images"

            def wanted_row(caption: str, source: str | None, name: str) -> bool:
                text = clean_caption(caption)
                return bool(text) and (
                    options.modality == "all" or classify_modality(text, source, name) == "CT"
                )

            wanted = metadata_names(files, wanted_row)
            report = extract_archives(archives, image_root, wanted.__contains__)
            atomic_write_text(out / STAGING / "archives.json", json.dumps(asdict(report), indent=2))
            if report.truncated:
                lost = ", ".join(report.truncated)
                log.warning("truncated or corrupt archive(s): %s; the images they lost are skipped", lost)
        elif not image_root.is_dir():
            raise FileNotFoundError(
                f"--images {images} is neither a folder of images nor of .tar.zst archives"
            )
        return ParquetSource(files, image_root=image_root)
    if is_local(spec):
        return ParquetSource(find_parquet_files(spec))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return StreamingSource(spec, config, token=token)
    raise FileNotFoundError(f"--source {spec} is neither a local path nor a Hugging Face dataset id")


def run_prepare(
    spec: str,
    out: Path,
    stage_options: StageOptions,
    finalize_options: FinalizeOptions,
    *,
    config: str = ReadOptions.config,
    images: str | None = None,
    token: str | None = None,
    workers: int = ReadOptions.workers,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Stage (resuming what is done) and, unless this is one shard of several, finalize."""
    from tqdm import tqdm

    out = Path(out)
    source = open_source(spec, out, config, images, token, stage_options)
    out.mkdir(parents=True, exist_ok=True)
    description = source.description + (f", first {limit} rows" if limit else "")
    units = source.units(limit)
    total = limit
    if isinstance(source, ParquetSource):  # row counts are in the parquet metadata: a real ETA
        units = list(units)
        total = sum(u.n_rows or 0 for i, u in enumerate(units) if i % shard[1] == shard[0])
    with tqdm(total=total, unit="row", desc="prepare", disable=not show_progress, dynamic_ncols=True) as bar:
        summary = stage(
            units,
            out,
            stage_options,
            source=description,
            shard=shard,
            workers=workers,
            progress=bar.update,
        )
    if shard[1] > 1:
        return {"shard": list(shard), **summary}
    return {**finalize(out, finalize_options), **summary}
