"""The human side of an evaluation: report.md, PNG plots and gallery.html, all in REPORT_DIR.

Everything here reads ``metrics.json`` and the predictions files; nothing is generated or scored
again, so the report always shows the numbers the JSON holds.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import ImageDraw

from ctscribe import CLINICAL_NOTICE
from ctscribe.atomic import atomic_write_text
from ctscribe.clinical.findings import Findings, parse_findings
from ctscribe.conversation.boxes import GridBox, box_iou, strip_grounding, to_pixels
from ctscribe.ct.images import BadImageError, open_image
from ctscribe.evaluate.entity_metrics import RADGRAPH_LEVELS
from ctscribe.evaluate.grounding import first_box
from ctscribe.evaluate.scores import FINDINGS_METRICS, model_text
from ctscribe.run_folder import LOSS_PLOT, TRAIN_LOG, plot_loss

# (label, where in a metrics block): the rows of the comparison table and plot.
ROWS = (
    ("BLEU-4", ("bleu4",)),
    ("ROUGE-L", ("rouge_l",)),
    ("CIDEr", ("cider",)),
    ("METEOR", ("meteor",)),
    ("BERTScore F1", ("bertscore",)),
    ("RaTEScore", ("ratescore",)),
    *((f"RadGraph F1, {level}", (f"radgraph_{level}",)) for level in RADGRAPH_LEVELS),
    *((name.replace("_", " "), ("findings", name)) for name in FINDINGS_METRICS),
    ("box IoU", ("boxes", "mean_iou")),
    ("box IoU >= 0.5", ("boxes", "iou50")),
    ("parseable box", ("boxes", "parseable")),
    ("BLEU-4, findings sentence", ("findings_sentence", "bleu4")),
    ("ROUGE-L, findings sentence", ("findings_sentence", "rouge_l")),
    ("closed-question accuracy", ("dialogue", "closed_acc")),
    ("open-question recall", ("dialogue", "open_recall")),
    ("box IoU, follow-up", ("dialogue", "boxes", "mean_iou")),
)
THUMBNAIL = 160
BOX_MARK = "[box]"  # where a text's box was, in the gallery's plain text
BOX_COLOURS = {"reference": "#00c000", "baseline": "#2f6fff", "model": "#ff2f7f"}  # reference as MedTrinity's


def _get(block: dict | None, path: tuple[str, ...]) -> tuple[float | None, list | None]:
    """A metric's value and 95% interval from a metrics block, or (None, None)."""
    node = block or {}
    for key in path[:-1]:
        node = node.get(key) or {}
    return node.get(path[-1]), (node.get("ci95") or {}).get(path[-1])


def _fmt(value: float | None, interval: list | None) -> str:
    if value is None:
        return "n/a"
    if interval and None not in interval:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{value:.3f}"


def _fmt_difference(comparison: dict | None, path: tuple[str, ...]) -> str:
    """A paired comparison's difference, its 95% interval and p, or "" where there is none."""
    node = comparison or {}
    for key in path:
        node = node.get(key) or {}
    if node.get("difference") is None:
        return ""
    low, high = node["ci"]
    interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
    p = f", p={node['p_value']:.4f}" if node.get("p_value") is not None else ""
    return f"{node['difference']:+.3f}{interval}{p}"


def comparison_rows(metrics: dict) -> list[tuple[str, str, str, str]]:
    """(metric, model, baseline, model - baseline with interval and p) strings for every metric the
    model has: the report's main table (the last two "" without a baseline)."""
    rows = []
    for label, path in ROWS:
        value, interval = _get(metrics, path)
        if value is None and _get(metrics.get("baseline"), path)[0] is None:
            continue
        baseline = _fmt(*_get(metrics.get("baseline"), path)) if metrics.get("baseline") else ""
        difference = _fmt_difference(metrics.get("comparison"), path)
        rows.append((label, _fmt(value, interval), baseline, difference))
    return rows


def image_swap_rows(metrics: dict) -> list[tuple[str, str, str, str]]:
    """(metric, own images, swapped images, drop with interval and p) for every metric the swap
    compared: how much the model relies on the image (none without an image swap)."""
    swap = metrics.get("image_swap")
    if not swap:
        return []
    rows = []
    for label, path in ROWS:
        if drop := _fmt_difference(swap["drop"], path):
            rows.append((label, _fmt(*_get(metrics, path)), _fmt(*_get(swap["model"], path)), drop))
    return rows


def box_count(metrics: dict) -> str | None:
    """Which samples box IoU counts, in a sentence (None when no reference has a box)."""
    boxes = metrics.get("boxes") or {}
    if not boxes.get("n"):
        return None
    return (
        f"Box IoU counts the {boxes['n']} samples whose reference has a box "
        f"({boxes['without_reference_box']} without one are left out); an output without a "
        "parseable box counts IoU 0."
    )


def _systems(metrics: dict) -> list[tuple[str, dict]]:
    return [("model", metrics)] + ([("baseline", metrics["baseline"])] if metrics.get("baseline") else [])


def _bar_chart(
    labels: list[str], bars: list[tuple[str, list[float], list | None]], ylabel: str, png: Path
) -> None:
    """Grouped bars on a 0..1 axis: one group per label, one bar per ``(name, values, errors)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5))
    width = 0.8 / max(1, len(bars))
    for k, (name, values, errors) in enumerate(bars):
        positions = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(labels))]
        axes.bar(positions, values, width, yerr=errors, capsize=3, label=name)
    axes.set_xticks(range(len(labels)), labels, rotation=35 if len(labels) > 4 else 0, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(ylabel)
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    plt.close(figure)


def plot_comparison(metrics: dict, png: Path) -> None:
    """Bars per metric (0..1 scales; CIDEr is 0..10 and left out), model vs baseline, 95% intervals."""
    rows = [path for _, path in ROWS if path[-1] != "cider" and _get(metrics, path)[0] is not None]
    bars = []
    for name, block in _systems(metrics):
        values, low, high = [], [], []
        for path in rows:
            value, interval = _get(block, path)
            value = value or 0.0
            lo, hi = interval if interval and None not in interval else (value, value)
            values.append(value)
            low.append(max(0.0, value - lo))
            high.append(max(0.0, hi - value))
        bars.append((name, values, [low, high]))
    labels = [label for label, path in ROWS if path in rows]
    _bar_chart(labels, bars, "score (95% bootstrap interval)", png)


def plot_regions(metrics: dict, png: Path) -> None:
    """Region accuracy per body part of the reference, model vs baseline, with sample counts."""
    parts = sorted(metrics.get("per_region", {}))
    bars = [
        (name, [(block.get("per_region", {}).get(p, {}).get("region_acc") or 0.0) for p in parts], None)
        for name, block in _systems(metrics)
    ]
    labels = [f"{p}\n(n={metrics['per_region'][p]['n']})" for p in parts]
    _bar_chart(labels, bars, "region accuracy", png)


def _thumbnail(path: str, boxes: list[tuple[GridBox, str]]) -> str:
    """A small inline PNG of an input image with ``(box, colour)`` drawn on it, or "" when it cannot
    be read. The boxes are on the grid of the prepared image, which is the split's image file."""
    try:
        image = open_image(path).convert("RGB")
    except BadImageError:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    draw = ImageDraw.Draw(image)
    for box, colour in boxes:
        draw.rectangle(to_pixels(box, image.width, image.height), outline=colour, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" alt="">'


def _differences(prediction: Findings, reference: Findings) -> list[str]:
    """Findings on which a prediction and its reference disagree, in words."""
    notes = []
    if prediction.body_part != reference.body_part:
        notes.append(f"region: {prediction.body_part or 'none'} vs {reference.body_part or 'none'}")
    if extra := sorted(prediction.abnormalities - reference.abnormalities):
        notes.append("not in reference: " + ", ".join(extra))
    if missing := sorted(reference.abnormalities - prediction.abnormalities):
        notes.append("missed: " + ", ".join(missing))
    if reference.laterality and prediction.laterality != reference.laterality:
        said, expected = ("/".join(sorted(f.laterality)) or "none" for f in (prediction, reference))
        notes.append(f"side: {said} vs {expected}")
    return notes


def _box_note(text: str, reference: GridBox | None) -> list[str]:
    """Where a prediction's box lies against the reference's, in words (nothing without a reference box)."""
    if reference is None:
        return []
    box = first_box(text)
    return [f"box IoU {box_iou(box, reference):.2f}" if box else "no parseable box"]


def _cell(text: str | None, notes: list[str], colour: str) -> str:
    if text is None:
        return "<td>-</td>"
    flagged = "".join(f'<div class="diff">{html.escape(n)}</div>' for n in notes)
    swatch = f'<span class="box" style="border-color:{colour}"></span>'
    return f"<td>{swatch}{html.escape(strip_grounding(text, BOX_MARK))}{flagged}</td>"


def write_gallery(records: list[dict], baseline: dict[str, dict], html_path: Path, examples: int) -> None:
    """gallery.html: thumbnail with the reference's and the outputs' boxes, reference, baseline and
    model output; disagreeing findings and each box's IoU noted."""
    rows = []
    for record in [r for r in records if r.get("status") == "ok" and r.get("reference")][:examples]:
        reference = parse_findings(strip_grounding(record["reference"]))
        reference_box = first_box(record["reference"])
        name = record.get("id") or record["input"]
        columns = [("reference", record["reference"])]
        if baseline:
            other = baseline.get(name, {})
            columns.append(("baseline", model_text(other) if other.get("status") == "ok" else None))
        columns.append(("model", model_text(record)))
        drawn = [(box, BOX_COLOURS[key]) for key, text in columns if text and (box := first_box(text))]
        cells = [
            f"<td>{_thumbnail(record['input'], drawn)}<div class='src'>{html.escape(name)}</div></td>",
            _cell(record["reference"], [], BOX_COLOURS["reference"]),
        ]
        for key, text in columns[1:]:
            notes = []
            if text:
                notes = _differences(parse_findings(strip_grounding(text)), reference)
                notes += _box_note(text, reference_box)
            cells.append(_cell(text, notes, BOX_COLOURS[key]))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "<th>image</th><th>reference</th>" + ("<th>baseline</th>" if baseline else "") + "<th>model</th>"
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>ctscribe evaluation gallery</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;max-width:28em}"
        ".diff{background:#fde2e1;color:#8a1f11;margin-top:4px;padding:2px 4px;font-size:90%}"
        ".src{font-size:75%;color:#666;word-break:break-all}.notice{background:#fff4ce;padding:8px}"
        ".box{display:inline-block;width:.8em;height:.8em;border:2px solid;margin-right:4px}"
        "</style></head><body><h1>Evaluation gallery</h1>"
        f"<p class='notice'>{html.escape(CLINICAL_NOTICE)}</p>"
        "<p>Red notes mark findings on which an output disagrees with the reference "
        "(body region, abnormality types, side), as the findings parser reads them. Boxes on the "
        "image: each column's colour, as its swatch shows; [box] marks where a text placed its box.</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table></body></html>",
        encoding="utf-8",
    )


def write_report(out: Path, metrics: dict, plots: list[str]) -> None:
    """report.md: the comparison table, per-region breakdown, plots, and how to read them."""
    has_baseline = bool(metrics.get("baseline"))
    lines = [
        "# Evaluation report",
        "",
        f"> {CLINICAL_NOTICE}",
        "",
        f"Model `{metrics.get('model')}` on `{metrics.get('data')}`: {metrics.get('n', 0)} test samples "
        f"scored, {metrics.get('failed', 0)} failed."
        + (f" Baseline `{metrics['baseline'].get('model')}`." if has_baseline else ""),
        "",
        "Values with 95% bootstrap intervals; docs/EVALUATION.md explains each number and its limits."
        + (
            f" Model - baseline on the {metrics['comparison']['n']} samples both scored: the paired "
            "difference, its 95% bootstrap interval and the p-value of a paired approximate-randomisation "
            "test."
            if metrics.get("comparison")
            else ""
        ),
        "",
        "| metric | model | baseline | model - baseline |" if has_baseline else "| metric | model |",
        "|---|---|---|---|" if has_baseline else "|---|---|",
    ]
    for label, model, base, difference in comparison_rows(metrics):
        cells = [label, model, base, difference] if has_baseline else [label, model]
        lines.append("| " + " | ".join(cells) + " |")
    if swap := metrics.get("image_swap"):
        lines += [
            "",
            f"## Image reliance: each image swapped for another record's ({swap['mode']})",
            "",
            f"The model described {swap['swapped']} test images again, each replaced by the image of another "
            f"record ({'of the same body region' if swap['mode'] == 'same-region' else 'of any region'}), "
            "scored against the original reference. A model that reads the image loses; one that writes "
            "the likely report whatever the image does not."
            + (f" Not swapped: {swap['skipped']}." if swap["skipped"] else ""),
            "",
            "| metric | own image | swapped image | drop |",
            "|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in image_swap_rows(metrics)]
    if counted := box_count(metrics):
        lines += ["", counted]
    if metrics.get("per_region"):
        lines += [
            "",
            "## By body region of the reference",
            "",
            "| region | n | region acc | abnormality F1 |",
        ]
        lines.append("|---|---|---|---|")
        for part, row in metrics["per_region"].items():
            scores = " | ".join(_fmt(row[key], None) for key in ("region_acc", "abnormality_f1"))
            lines.append(f"| {part} | {row['n']} | {scores} |")
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines += ["", "Examples side by side: [gallery.html](gallery.html).", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def build_report(
    out: Path, metrics: dict, records: list[dict], baseline: list[dict], run_dir: Path | None, examples: int
) -> None:
    """Write metrics.json, the plots, report.md and gallery.html into ``out``."""
    # A reader never sees half a metrics.json.
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    plots = ["metrics.png"]
    plot_comparison(metrics, out / "metrics.png")
    if metrics.get("per_region"):
        plot_regions(metrics, out / "regions.png")
        plots.append("regions.png")
    if run_dir is not None and (run_dir / TRAIN_LOG).is_file():
        plot_loss(run_dir / TRAIN_LOG, out / LOSS_PLOT)
        plots.append(LOSS_PLOT)
    by_key = {r.get("id") or r["input"]: r for r in baseline}
    write_gallery(records, by_key, out / "gallery.html", examples)
    write_report(out, metrics, plots)
