"""What the page gives a clinician to keep: the image with the answer's boxes drawn, and the report.

Boxes are drawn numbered as the reply numbers them ("[box 1]"), in amber, as outlines so the finding
stays visible. The report holds the image's file name, window and slice only (never DICOM header
content), the conversation, the boxes, the model and the date, with the clinical notice at the top
and the bottom so no excerpt loses it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ctscribe import CLINICAL_NOTICE
from ctscribe.conversation.boxes import Located
from ctscribe.ct.uploads import NO_WINDOW, Upload

BOX_COLOUR = (255, 200, 0)  # amber: visible on grey CT, unlike MedTrinity's own green boxes
KEEP_REPORTS_S = 3600


def draw_boxes(image: Image.Image, boxes: Sequence[Located]) -> Image.Image:
    """A copy of ``image`` with each box outlined and numbered as the reply numbers it ("[box 1]")."""
    drawn = image.convert("RGB")  # a copy, also when the image is RGB already
    if drawn is image:
        drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    line = max(2, round(max(drawn.size) / 256))
    font = ImageFont.load_default(size=max(12, line * 6))
    for number, box in enumerate(boxes, start=1):
        if box.pixels is None:
            continue
        x0, y0, x1, y1 = box.pixels
        draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), str(number), font=font)
        tag_y = y0 - (bottom - top) - 2 * line if y0 > bottom - top + 2 * line else y1 + line
        draw.rectangle(
            (x0, tag_y, x0 + right - left + 2 * line, tag_y + bottom - top + 2 * line), fill=BOX_COLOUR
        )
        draw.text((x0 + line - left, tag_y + line - top), str(number), fill=(0, 0, 0), font=font)
    return drawn


def report_markdown(
    upload: Upload, history: Sequence[dict], model: str, when: datetime, boxes: Sequence[Located] = ()
) -> str:
    """The downloadable report: the image (file name, window and slice only), the conversation, the
    boxes drawn, the model, the date, and the clinical notice at the top and the bottom so no excerpt
    loses it."""
    lines = [
        "# ctscribe report",
        "",
        f"> **Clinical notice.** {CLINICAL_NOTICE}",
        "",
        f"- Date: {when.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- Model: {model}",
        f"- Image: {upload.name}",
        f"- Window: {upload.window or NO_WINDOW}",
    ]
    if upload.slice:
        lines.append(f"- Slice: {upload.slice_label} (the slice described)")
    if upload.note:
        lines.append(f"- Note: {upload.note}")
    lines += ["", "## Conversation", ""]
    for turn in history:
        who = "Question" if turn["role"] == "user" else "ctscribe"
        lines += [f"**{who}:**", "", turn["content"].strip(), ""]
    if boxes:
        lines += ["## Boxes drawn on the image", ""]
        for number, box in enumerate(boxes, start=1):
            if box.pixels is not None:
                x0, y0, x1, y1 = box.pixels
                lines.append(f"{number}. {box.phrase or 'box'}: x {x0}-{x1}, y {y0}-{y1}")
        lines += ["", "(pixels of the image shown, counted from its top-left corner, edges included)", ""]
    lines += ["---", "", CLINICAL_NOTICE, ""]
    return "\n".join(lines)


def write_report(
    folder: Path, upload: Upload, history: Sequence[dict], model: str, boxes: Sequence[Located] = ()
) -> Path:
    """Write the report to a fresh folder (so concurrent users never share a file) for download.

    Gradio serves a copy from its own cache (cleaned by ``delete_cache``); our copies older than
    :data:`KEEP_REPORTS_S` are removed here, so reports do not pile up on the page server.
    """
    cutoff = time.time() - KEEP_REPORTS_S
    for old in folder.iterdir():
        if old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
    when = datetime.now().astimezone()
    target = Path(tempfile.mkdtemp(dir=folder)) / f"ctscribe-report-{when:%Y%m%d-%H%M%S}.md"
    target.write_text(report_markdown(upload, history, model, when, boxes), encoding="utf-8")
    return target
