"""Describing a study's chosen slices in batches, through any backend, resumably.

Slices of all series go through :func:`ctscribe.predict.describe_batch` (the batch description
predict uses: one ``generate`` call per batch, boxes placed in the slice's own pixels) and are appended
to ``slices.jsonl`` as each batch finishes, keyed by the series' identity and the slice's index, so a
killed run keeps every finished batch and a rerun describes only what is missing
(:func:`ctscribe.predict.load_done`). A progress bar counts slices per second.

Which slices (``--slices``): ``all`` (the default), ``every:K``, or ``body``: every slice whose windowed
image shows a body, i.e. at least :data:`ctscribe.ct.images.MIN_BODY_FRACTION` of its pixels brighter
than the darkest twentieth of the image by :data:`BODY_CONTRAST` grey levels. Slices left out by
``body`` are counted in the series' ``skipped`` with that reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ctscribe.ct.images import MIN_BODY_FRACTION
from ctscribe.ct.inputs import InputItem, parse_slices
from ctscribe.ct.windows import WindowSpec
from ctscribe.generate.engine import GenerationBackend
from ctscribe.predict import append_records, batches, describe_batch, load_done, record_key
from ctscribe.study.series import Series

log = logging.getLogger(__name__)

BODY = "body"
BODY_CONTRAST = 40  # grey levels above the air's: soft tissue in any CT window, not noise
NO_BODY = "no body in the slice (--slices body)"


def check_slices(spec: str) -> str:
    """``all``, ``every:K`` or ``body``; ValueError naming the choices otherwise (before any reading)."""
    if spec.strip().lower() == BODY:
        return BODY
    if parse_slices(spec).mode == "middle":
        raise ValueError("a study reads more than the middle slice: use all, every:K or body")
    return spec


def chosen_slices(spec: str, count: int) -> list[int]:
    """Indices of the slices ``spec`` reads, before ``body`` looks at them."""
    return list(range(count)) if check_slices(spec) == BODY else parse_slices(spec).pick(count)


def has_body(image: Image.Image) -> bool:
    """Whether a windowed slice shows a body (see the module docstring)."""
    grey = np.asarray(image.convert("L"), dtype=np.int16)
    air = np.percentile(grey, 5)
    return float((grey > air + BODY_CONTRAST).mean()) >= MIN_BODY_FRACTION


@dataclass
class Described:
    """What a run learnt per series: ok records (this run's and earlier runs') and skipped slices."""

    records: dict[str, list[dict]] = field(default_factory=dict)  # identity -> ok records, by slice
    skipped: dict[str, list[dict]] = field(default_factory=dict)  # identity -> {"slice", "reason"}
    new: int = 0  # slices described by this run


def describe_series(
    engine: GenerationBackend,
    series: Sequence[Series],
    out: Path,
    *,
    slices: str,
    window: WindowSpec,
    prompt: str,
    batch_size: int,
    max_new_tokens: int,
    show_progress: bool = True,
) -> Described:
    """Describe the chosen slices of every series into ``out`` (slices.jsonl), resuming; see above."""
    done = load_done(out)
    described = Described(skipped={s.identity: [] for s in series})
    plan = [(s, chosen_slices(slices, s.slice_count)) for s in series]

    def pending() -> Iterator[InputItem]:
        for one, chosen in plan:
            todo = [index for index in chosen if record_key(one.identity, index) not in done]
            for item in one.items(todo, window):
                if slices == BODY and item.image is not None and not has_body(item.image):
                    described.skipped[one.identity].append({"slice": item.slice_index, "reason": NO_BODY})
                    progress.update(1)
                    continue
                yield dataclasses.replace(item, source=one.identity)  # records name the series, not files

    total = sum(len(chosen) for _, chosen in plan)
    already = sum(record_key(one.identity, index) in done for one, chosen in plan for index in chosen)
    progress = tqdm(total=total, initial=already, desc="study", unit="slice", disable=not show_progress)
    with out.open("a", encoding="utf-8") as sink:
        for batch in batches(pending(), batch_size):
            records = describe_batch(engine, batch, prompt, prompt, max_new_tokens)
            append_records(sink, records)
            for record in records:
                if record["status"] != "ok":
                    reason, index = record["error"], record["slice"]
                    described.skipped[record["input"]].append({"slice": index, "reason": reason})
                    log.warning("slice %s of series %s: %s", index, record["input"], reason)
                else:
                    described.new += 1
            progress.update(len(batch))
    progress.close()
    for line in out.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["status"] == "ok":
            described.records.setdefault(record["input"], []).append(record)
    for records in described.records.values():
        records.sort(key=lambda record: record["slice"])
    return described
