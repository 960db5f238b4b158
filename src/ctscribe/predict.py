"""Batch inference: CT images, DICOM series and NIfTI volumes in, one JSONL record per image out.

The output is a log of what was asked and answered, safe to resume and to share:

- one record per image or slice, written (and flushed) as soon as its batch finishes, so a killed
  run loses at most one batch; rerunning with the same ``--out`` skips inputs that already have a
  result and retries those that failed;
- a bad input becomes an error record with its reason, and the run goes on;
- every record carries :data:`ctscribe.CLINICAL_NOTICE` in a field of its own, never inside the
  generated text; inputs are named by the path the user gave, never by DICOM header content, so no
  patient identifier reaches the output or the log;
- boxes the model points with become fields of their own (``boxes``: the phrase, the box on the
  model's 0-1000 grid and in pixels of the input image, for DICOM and NIfTI the windowed slice);
  ``text`` is for a reader (each box a "[box n]" after its phrase) and ``raw_text`` keeps the
  model's own words, markup included (:mod:`ctscribe.conversation.boxes`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from ctscribe import CLINICAL_NOTICE
from ctscribe.atomic import atomic_write, atomic_write_text
from ctscribe.conversation.boxes import ImageFrame, locate, reader_text
from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.conversation.records import user_message
from ctscribe.ct.images import BadImageError
from ctscribe.ct.inputs import InputItem, iter_inputs
from ctscribe.ct.options import InputOptions
from ctscribe.generate.engine import GenerationBackend, GenerationRequest
from ctscribe.generate.options import GenerateOptions

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "input",
    "slice",
    "window",
    "status",
    "text",
    "boxes",
    "error",
    "prompt",
    "model",
    "seconds",
    "notice",
)


@dataclass
class PredictSummary:
    written: int = 0  # new records with a generated text
    failed: int = 0  # new error records
    skipped: int = 0  # inputs that already had a result in the output (resume)
    errors: dict[str, int] = field(default_factory=dict)  # reason -> count, for the closing line

    @property
    def succeeded(self) -> int:
        return self.written + self.skipped


def record_key(source: str, slice_index: int | None) -> str:
    """What identifies one result, for resume: the input as given and the slice within it."""
    return source if slice_index is None else f"{source}#{slice_index}"


def load_done(out: Path) -> set[str]:
    """Keys of the successful records in ``out``, rewriting it without failures and torn lines.

    A process killed mid-write leaves a partial last line; failed inputs are dropped so that a rerun
    retries them (the file may have been fixed). The rewrite goes through a temporary file and a
    rename, so a kill during it loses nothing.
    """
    if not out.exists():
        return set()
    kept: list[str] = []
    done: set[str] = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill: its input runs again
        if isinstance(record, dict) and record.get("status") == "ok":
            kept.append(line)
            done.add(record_key(record["input"], record.get("slice")))
    atomic_write_text(out, "".join(f"{line}\n" for line in kept))
    return done


def _record(item: InputItem, model: str, prompt: str, **result) -> dict:
    record = {
        "input": item.source,
        "slice": item.slice_index,
        "window": item.window,
        "prompt": prompt,
        "model": model,
        **result,
        "notice": CLINICAL_NOTICE,
    }
    if item.record_id is not None:
        record["id"] = item.record_id
    if item.reference is not None:
        record["reference"] = item.reference
    return record


def describe_batch(
    engine: GenerationBackend,
    batch: list[InputItem],
    prompt: str | None,
    default_prompt: str,
    max_new_tokens: int,
) -> list[dict]:
    """One record per item of ``batch``, in order: its description (one ``generate`` call for the
    whole batch), or its error. Predict and ``ctscribe study`` both describe through here."""
    records: list[dict | None] = [None] * len(batch)  # filled in input order
    runnable: list[tuple[int, str, ImageFrame, GenerationRequest]] = []
    for slot, item in enumerate(batch):
        text_prompt = prompt or item.prompt or default_prompt
        try:
            if item.error is not None:
                raise BadImageError(item.error)
            prepared = engine.prepare(item.image)  # with its crop, for the boxes
        except BadImageError as exc:
            records[slot] = _record(item, engine.name, text_prompt, status="error", error=str(exc))
            continue
        request = GenerationRequest([user_message(text_prompt)], [prepared.image], max_new_tokens)
        runnable.append((slot, text_prompt, prepared.frame, request))
    if runnable:
        start = time.perf_counter()
        results = engine.generate([request for *_, request in runnable])
        seconds = (time.perf_counter() - start) / len(runnable)
        for (slot, text_prompt, frame, _), result in zip(runnable, results, strict=True):
            ok = {
                "status": "ok",
                "text": reader_text(result.text),
                "raw_text": result.text,
                "boxes": [box.as_dict() for box in locate(result.text, frame)],
                "seconds": round(seconds, 3),
                # the prompt's length shows which pixel budget its image was prepared at
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
            records[slot] = _record(batch[slot], engine.name, text_prompt, **ok)
    return [record for record in records if record is not None]


def append_records(sink: IO[str], records: list[dict]) -> None:
    """Append JSONL records and force them to disk, so that a killed run keeps every finished batch."""
    for record in records:
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    sink.flush()
    os.fsync(sink.fileno())


def batches(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    """``items`` in lists of ``size`` (the last may be shorter), pulled lazily so slices load as needed."""
    batch: list[InputItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict(
    engine: GenerationBackend,
    inputs: list[str | Path],
    out: Path,
    *,
    prompt: str | None = None,
    default_prompt: str = DEFAULT_PROMPTS["en"],
    window: str = InputOptions.window,
    slices: str = InputOptions.slices,
    batch_size: int = GenerateOptions.batch_size,
    limit: int | None = None,
    max_new_tokens: int = GenerateOptions.max_new_tokens,
    show_progress: bool = True,
) -> PredictSummary:
    """Describe every image in ``inputs``, appending records to the JSONL file ``out``.

    Each image is asked ``prompt``; without one, the prompt its prepared record holds (a split JSON),
    else ``default_prompt`` (the CLI passes the one the model records, see ctscribe.model_settings).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(out)
    summary = PredictSummary()

    def pending() -> Iterator[InputItem]:
        taken = 0
        for item in iter_inputs(inputs, window=window, slices=slices):
            if limit is not None and taken >= limit:
                return
            taken += 1
            if record_key(item.source, item.slice_index) in done:
                summary.skipped += 1
                continue
            yield item

    progress = tqdm(desc="predict", unit="image", disable=not show_progress)
    with out.open("a", encoding="utf-8") as sink:
        for batch in batches(pending(), batch_size):
            records = describe_batch(engine, batch, prompt, default_prompt, max_new_tokens)
            append_records(sink, records)
            for record in records:
                if record["status"] == "ok":
                    summary.written += 1
                else:
                    summary.failed += 1
                    summary.errors[record["error"]] = summary.errors.get(record["error"], 0) + 1
                    log.warning("%s: %s", record_key(record["input"], record["slice"]), record["error"])
            progress.update(len(batch))
    progress.close()
    return summary


def write_csv(jsonl: Path, csv_path: Path) -> int:
    """The JSONL results as a CSV table (for spreadsheets), written atomically; returns the rows.

    ``boxes`` is a cell of JSON (the records' list); ``raw_text`` stays in the JSONL only.
    """
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        if "boxes" in row:
            row["boxes"] = json.dumps(row["boxes"], ensure_ascii=False)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(csv_path, write)
    return len(rows)
