"""Writing a study report: study.json, report.md with its key slices drawn, and the strip plot.

Everything is written atomically (:mod:`ctscribe.atomic`), so a reader sees the last whole report or
none. The layout of ``OUT``::

    study.json          the report (docs/STUDY.md, "Report format")
    report.md           for a reader: per series its findings and each key slice with its box
    strip.png           findings by slice: one panel per series, a bar per finding, always written
    key-slices/*.png    the key slices (windowed, as the model saw them before cropping) with boxes
    slices.jsonl        every slice's description, appended as described (resume; ctscribe.study.describe)

Nothing here reads a DICOM header: series are named by their hash, folder and order
(:mod:`ctscribe.study.series`).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from ctscribe import CLINICAL_NOTICE
from ctscribe.atomic import atomic_write, atomic_write_text

STUDY_JSON = "study.json"
REPORT_MD = "report.md"
STRIP_PNG = "strip.png"
KEY_SLICES = "key-slices"
BOX_COLOUR = (255, 64, 64)


def key_slice_name(series_number: int, finding_number: int) -> str:
    """The key slice image of finding ``finding_number`` of series ``series_number`` (both from 1)."""
    return f"{KEY_SLICES}/series-{series_number}-finding-{finding_number}.png"


def draw_box(image: Image.Image, box: list[int] | None) -> Image.Image:
    """A copy of ``image`` with the inclusive pixel ``box`` outlined (unchanged copy when None)."""
    drawn = image.convert("RGB")
    if box is not None:
        width = max(1, round(max(drawn.size) / 160))
        ImageDraw.Draw(drawn).rectangle(box, outline=BOX_COLOUR, width=width)
    return drawn


def write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))


def plot_strip(study: dict, png: Path) -> None:
    """Findings by slice, one panel per series: slice index across, a bar per finding over its slice
    range with a dot at its key slice, grey ticks under the slices read and red crosses at skipped ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = study["series"] or [None]
    heights = [1.2 + 0.35 * len(entry["findings"]) if entry else 1.2 for entry in panels]
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(9, sum(heights) + 0.6), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, entry in zip(axes[:, 0], panels, strict=True):
        if entry is None:
            ax.text(0.5, 0.5, "no series read", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        findings = entry["findings"]
        for row, finding in enumerate(findings):
            first, last = finding["slices"]
            ax.barh(row, last - first + 1, left=first - 0.5, height=0.6, color="tab:orange")
            ax.plot(finding["key_slice"], row, "o", color="black", markersize=4)
        read = [item["index"] for item in entry["slices"]]
        skipped = [item["slice"] for item in entry["skipped"]]
        ax.plot(read, [-1] * len(read), "|", color="grey", markersize=6)
        ax.plot(skipped, [-1] * len(skipped), "x", color="red", markersize=5)
        labels = [_finding_label(f) for f in findings]
        ax.set_yticks([-1, *range(len(findings))], ["slices read", *labels])
        ax.set_ylim(len(findings) - 0.4, -1.6)
        ax.set_xlim(-0.5, max(entry["slice_count"], 1) - 0.5)
        title = f"{entry['label']}: {entry['source']}"
        ax.set_title(title if findings else f"{title}: no findings", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("slice (feet to head for axial series)")
    figure.tight_layout()
    atomic_write(png, lambda temporary: figure.savefig(temporary, format="png", dpi=110))
    plt.close(figure)


def _finding_label(finding: dict) -> str:
    return ", ".join(str(finding[k]) for k in ("abnormality", "region", "side") if finding[k])


def render_markdown(study: dict) -> str:
    """report.md: the notice, then per series its order, what was read and skipped, and its findings."""
    lines = [
        "# Study report",
        "",
        f"> {CLINICAL_NOTICE}",
        "",
        f"Model: `{study['model']}`. Slices: `{study['slices']}`; window: `{study['window']}`.",
        "",
        f"![findings by slice]({STRIP_PNG})",
        "",
    ]
    for number, entry in enumerate(study["series"], start=1):
        lines += [
            f"## {entry['label']}: `{entry['source']}` ({entry['kind']})",
            "",
            f"{entry['slices_read']} of {entry['slice_count']} slices read; {len(entry['skipped'])} skipped. "
            f"Slice order: {entry['order']}.",
            "",
        ]
        for item in entry["skipped"]:
            lines.append(f"- slice {item['slice']} skipped: {item['reason']}")
        if not entry["findings"]:
            lines += ["", "No finding stated on any slice read.", ""]
        for index, finding in enumerate(entry["findings"], start=1):
            first, last = finding["slices"]
            lines += [
                "",
                f"### Finding {index}: {_finding_label(finding)}",
                "",
                f"Slices {first}-{last} ({finding['slices_stating']} described slices state it); key slice "
                f"{finding['key_slice']}, box {finding['box']}.",
                "",
                f"![key slice {finding['key_slice']}]({key_slice_name(number, index)})",
            ]
        lines.append("")
    if study["skipped"]:
        lines += ["## Files in no series", ""]
        lines += [f"- `{item['file']}`: {item['reason']}" for item in study["skipped"]]
    return "\n".join(lines) + "\n"


def write_study(out: Path, study: dict, key_images: dict[tuple[int, int], Image.Image]) -> None:
    """Write the key slices, the strip plot, report.md and last study.json (the sign it is complete).

    ``key_images`` maps (series number, finding number), both from 1, to the key slice's image.
    """
    for (series_number, finding_number), image in key_images.items():
        box = study["series"][series_number - 1]["findings"][finding_number - 1]["box"]
        write_png(out / key_slice_name(series_number, finding_number), draw_box(image, box))
    plot_strip(study, out / STRIP_PNG)
    atomic_write_text(out / REPORT_MD, render_markdown(study))
    atomic_write_text(out / STUDY_JSON, json.dumps(study, indent=1, ensure_ascii=False) + "\n")
