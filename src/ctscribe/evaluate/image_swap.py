"""Image reliance: does the model read the image, or write the likely report whatever it is shown?

A fine-tuned report model can learn the captions' prior: the commonest region, the commonest finding.
To tell, the test split is described again with each record's image replaced by another record's
(another patient's), while its reference stays: a model that reads the image now describes the other
image and its clinical scores against the reference drop; one that writes the likely report scores
the same. The drop and its significance are the paired comparison of the two runs
(:mod:`ctscribe.evaluate.significance`).

- ``any``: the other image may be of any body region: does the model read the image at all?
- ``same-region``: the other image shows the same body part as the reference states (its
  ``body_part``): does the model read the findings from the image, beyond its region? Records whose
  reference names no body part, or whose body part no other record shares, cannot be swapped and are
  skipped with that reason.

The swap is a seeded derangement: the records (of a region) are shuffled and each takes the image of
the next in the shuffled cycle, so no record keeps its own image and every image is used once.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ctscribe.atomic import atomic_write_text
from ctscribe.clinical.findings import parse_findings
from ctscribe.conversation.boxes import strip_grounding
from ctscribe.conversation.records import record_text

SWAP_MODES = ("any", "same-region")
SWAPPED_SPLIT = "swapped_test.json"  # in REPORT_DIR: the split with the images swapped


def _group(record: dict, mode: str) -> tuple[str | None, str | None]:
    """(group the record is swapped within, or None; the reason when None)."""
    if not record.get("id"):
        return None, "no id to pair it with its own-image prediction"
    if mode == "any":
        return "all", None
    reference = record_text(record, "assistant")
    part = parse_findings(strip_grounding(reference or "")).body_part
    return (part, None) if part else (None, "reference names no body part")


def write_swapped_split(data: Path, out: Path, mode: str, *, limit: int | None = None, seed: int = 0) -> dict:
    """Write ``out``: the first ``limit`` records of the split ``data`` with their images swapped
    (absolute paths, so the file can live anywhere). Returns ``{"mode", "swapped", "skipped":
    {reason: count}}``."""
    if mode not in SWAP_MODES:
        raise ValueError(f"unknown image swap {mode!r}; choose one of {', '.join(SWAP_MODES)}")
    records = json.loads(data.read_text(encoding="utf-8"))[:limit]
    skipped: Counter[str] = Counter()
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        group, reason = _group(record, mode)
        if group is None:
            skipped[reason] += 1
        else:
            groups.setdefault(group, []).append(index)
    rng = np.random.default_rng(seed)
    swapped = []
    for members in groups.values():
        if len(members) < 2:
            skipped["no other image to swap with"] += len(members)
            continue
        cycle = [members[i] for i in rng.permutation(len(members))]
        for position, index in enumerate(cycle):
            donor = records[cycle[(position + 1) % len(cycle)]]
            image = str((data.parent / donor["images"][0]).resolve())
            swapped.append((index, {**records[index], "images": [image]}))
    swapped.sort(key=lambda pair: pair[0])  # the split's order, as the own-image predictions
    atomic_write_text(out, json.dumps([record for _, record in swapped], ensure_ascii=False, indent=1))
    return {"mode": mode, "swapped": len(swapped), "skipped": dict(skipped)}
