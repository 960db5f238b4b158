"""``ctscribe study``: read a series (or several), describe its slices, gather findings, report.

The steps, in order, and why:

1. :func:`ctscribe.study.series.open_study` reads the input into series before any model call, so an
   input with no series fails at once and a file that belongs to no series is named with its reason;
2. :func:`ctscribe.study.describe.describe_series` describes the chosen slices of every series in
   batches through the backend, appending to ``slices.jsonl`` (a killed run resumes there);
3. :func:`ctscribe.study.grouping.group_findings` gathers each series' slices into study findings;
4. the key slices are read again (only those) and :func:`ctscribe.study.report.write_study` writes the
   report, study.json last.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ctscribe import CLINICAL_NOTICE
from ctscribe.ct.options import InputOptions
from ctscribe.ct.windows import WindowSpec, parse_window
from ctscribe.generate.engine import GenerationBackend
from ctscribe.generate.options import GenerateOptions
from ctscribe.study.describe import check_slices, describe_series
from ctscribe.study.grouping import group_findings
from ctscribe.study.options import StudyOptions
from ctscribe.study.report import write_study
from ctscribe.study.series import Series, open_study

SLICES_JSONL = "slices.jsonl"


class NoSeriesError(ValueError):
    """An input in which no series could be read; ``skipped`` says why for each file."""

    def __init__(self, message: str, skipped: list[dict]) -> None:
        super().__init__(message)
        self.skipped = skipped


def _key_images(series: Series, findings: list[dict], window: WindowSpec) -> dict[int, Image.Image]:
    wanted = sorted({finding["key_slice"] for finding in findings})
    return {item.slice_index: item.image for item in series.items(wanted, window) if item.image is not None}


def run_study(
    engine: GenerationBackend,
    source: Path,
    out: Path,
    *,
    prompt: str,
    slices: str = StudyOptions.slices,
    window: str = InputOptions.window,
    batch_size: int = GenerateOptions.batch_size,
    max_new_tokens: int = GenerateOptions.max_new_tokens,
    show_progress: bool = True,
) -> dict:
    """Write the study report of ``source`` (a folder, zip, DICOM file or NIfTI volume) into ``out``
    and return study.json's content. ``prompt`` is asked of every slice."""
    check_slices(slices)
    spec = parse_window(window)
    out.mkdir(parents=True, exist_ok=True)
    with open_study(source) as study_input:
        if not study_input.series:
            raise NoSeriesError(
                f"{source.name}: no CT series, volume or slice images found", study_input.skipped
            )
        described = describe_series(
            engine,
            study_input.series,
            out / SLICES_JSONL,
            slices=slices,
            window=spec,
            prompt=prompt,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            show_progress=show_progress,
        )
        entries, key_images = [], {}
        for number, series in enumerate(study_input.series, start=1):
            records = described.records.get(series.identity, [])
            findings = [finding.as_dict() for finding in group_findings(records)]
            images = _key_images(series, findings, spec)
            for index, finding in enumerate(findings, start=1):
                if finding["key_slice"] in images:
                    key_images[(number, index)] = images[finding["key_slice"]]
            entries.append(
                {
                    "label": f"series {number}",
                    "id": series.identity,
                    "source": series.source,
                    "kind": series.kind,
                    "order": series.order,
                    "slice_count": series.slice_count,
                    "slices_read": len(records),
                    "skipped": sorted(described.skipped[series.identity], key=lambda item: item["slice"]),
                    "findings": findings,
                    "slices": [
                        {"index": r["slice"], "text": r["text"], "boxes": r["boxes"]} for r in records
                    ],
                }
            )
    study = {
        "notice": CLINICAL_NOTICE,
        "model": engine.name,
        "slices": slices,
        "window": spec.label,
        "described_now": described.new,
        "series": entries,
        "skipped": study_input.skipped,
    }
    write_study(out, study, key_images)
    return study
