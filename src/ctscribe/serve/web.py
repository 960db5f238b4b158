"""The clinicians' web page: upload a CT image, get a description, ask follow-ups, download a report.

The page is only a *client* of an OpenAI-compatible API (``/v1/chat/completions`` with ``stream``,
and ``/v1/models`` to find the model when run on its own), so the same page works in front of
``ctscribe serve`` (which mounts it at ``/``) and in front of ``vllm serve`` on an exported model::

    python -m ctscribe.serve.web --base-url http://gpu-host:8000/v1 --port 7860

What stays on the page server: reading uploads. DICOM and NIfTI go through the same reader and CT
windowing as ``ctscribe predict`` (:func:`ctscribe.ct.inputs.iter_inputs`: every slice of a
multi-frame file, series or volume in position order, ``auto`` or a chosen window), and the slice the
clinician picks with the slice slider (the middle one first) through the one image path
(:func:`ctscribe.ct.images.prepare_image`), so the API receives the pixels the model was trained on,
as a lossless PNG data URL. The slice described is named on the page and in the report, and the boxes
of an answer (the API's ``boxes``, in the pixels of the image sent) are mapped back through the
crop and resize onto that slice and drawn on it, numbered as the text numbers them ("[box 1]").
Nothing of a DICOM header is shown, logged or written to the report: only the file name, the window
and the slice number. Conversations are not logged either. Gradio keeps every upload in its temp
folder (``GRADIO_TEMP_DIR``) for up to an hour, headers and all, so the page reads each upload into
the session's memory and deletes the file at once (:func:`take_uploads`); the decoded slices stay in
the session's memory (:class:`Volume`), and a window change reads the held files again through a
private folder that lasts one read.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ctscribe import CLINICAL_NOTICE
from ctscribe.conversation.boxes import GridBox, ImageFrame, Located, to_grid
from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.ct.images import DEFAULT_MAX_PIXELS, BadImageError, ImageOptions, prepare_image
from ctscribe.ct.inputs import iter_inputs
from ctscribe.ct.windows import AUTO, CUSTOM, PRESETS, parse_window
from ctscribe.generate.engine import DEFAULT_MAX_NEW_TOKENS
from ctscribe.generate.openai_engine import choose_model, image_data_url, server_error_message

log = logging.getLogger(__name__)

WINDOW_CHOICES = [AUTO, *PRESETS, CUSTOM]
LANGUAGES = [("English", "en"), ("中文", "zh")]
MAX_TOKENS = 1024  # the page's limit; ctscribe serve allows 2048
KEEP_REPORTS_S = 3600
TIMEOUT_S = 600  # a long description on a busy CPU server takes minutes
NO_WINDOW = "none (an image file is shown as uploaded)"
UNSUPPORTED = "unsupported file: upload a PNG or JPG image, DICOM file(s) of one series, or a NIfTI volume"
HELP = (
    "Upload a CT image (PNG or JPG), a DICOM file, all DICOM files of one series, or a NIfTI volume; "
    "for a series or volume, pick the slice with the slider (the middle one first). Then **Describe**, "
    "and ask follow-up questions about the same slice; where the answer points, a numbered box is "
    "drawn on the image. DICOM headers are read only for the image and the window: no patient data "
    "is shown."
)
BOX_COLOUR = (255, 200, 0)  # amber: visible on grey CT, unlike MedTrinity's own green boxes


class UploadError(ValueError):
    """An upload the page cannot use; ``str()`` is shown on the page as it is."""


@dataclass(frozen=True)
class Upload:
    """The image the conversation is about: what is shown, what is sent, and how it was made."""

    image: Image.Image  # windowed 8-bit RGB, shown on the page
    data_url: str  # the prepared image as a PNG data URL, sent in the first user turn
    name: str  # the file name only, never a folder or header content
    window: str | None  # window label for DICOM/NIfTI, None for image files
    note: str = ""  # e.g. that only the first of several series is used
    slice: tuple[int, int] | None = None  # (number from 1, slices in the series) of a series or volume
    # Where the image sent lies in the image shown, and its size: boxes come back in its pixels.
    frame: ImageFrame | None = None
    sent_size: tuple[int, int] | None = None

    @property
    def slice_label(self) -> str:
        return f"{self.slice[0]} of {self.slice[1]}" if self.slice else ""

    @property
    def info(self) -> str:
        """One Markdown line for the page and the report."""
        text = f"**Image:** {self.name} · **Window:** {self.window or NO_WINDOW}"
        if self.slice:
            text += f" · **Slice:** {self.slice_label}"
        return f"{text} · {self.note}" if self.note else text

    def shown_boxes(self, boxes: Sequence[dict]) -> list[Located]:
        """The API's boxes (pixels of the image sent) in pixels of the image shown; a malformed box
        is left out, not drawn wrong."""
        located = []
        for box in boxes:
            try:
                sent = to_grid(tuple(int(v) for v in box["box_pixels"]), *self.sent_size)
                pixels = self.frame.to_pixels(sent)
                located.append(Located(str(box.get("phrase") or ""), GridBox(*box["box_1000"]), pixels))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        return located


@dataclass(frozen=True)
class Volume:
    """What was uploaded, decoded and windowed, held in the session's memory (never on disk): one
    image for an image file, every readable slice in position order for a DICOM series or a NIfTI
    volume (greyscale, one byte a pixel: 300 slices of 512² hold 79 MB)."""

    slices: tuple[Image.Image, ...]
    names: tuple[str, ...]  # each slice's file name (a DICOM series has a file per slice)
    window: str | None
    total: int | None = None  # slices in the series or volume; None for a single image or slice
    numbers: tuple[int, ...] = ()  # each slice's place in it, from 0 (unreadable slices are left out)
    note: str = ""

    @property
    def middle(self) -> int:
        """The position first shown: the middle slice, as ``ctscribe predict`` picks it."""
        return len(self.slices) // 2

    def upload(self, position: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Upload:
        """The slice at ``position`` (0-based, clamped), prepared for the model."""
        position = min(max(0, int(position)), len(self.slices) - 1)
        image = self.slices[position].convert("RGB")
        try:
            prepared = prepare_image(image, ImageOptions(max_pixels=max_pixels))
        except BadImageError as error:
            raise UploadError(f"unusable image: {error}") from None
        number = (self.numbers[position] + 1, self.total) if self.total is not None else None
        return Upload(
            image,
            image_data_url(prepared.image),
            self.names[position],
            self.window,
            self.note,
            number,
            prepared.frame,
            prepared.image.size,
        )


def window_spec(choice: str, custom: str = "") -> str:
    """The ``--window`` string for the selector: ``custom`` takes the W/L box, checked here so a typo
    is reported next to the box rather than as a failed read."""
    spec = (custom or "").strip() if choice == CUSTOM else (choice or AUTO)
    if not spec:
        raise UploadError("custom window: type WIDTH/LEVEL in HU, such as 400/50 or 1500/-600")
    try:
        parse_window(spec)
    except ValueError as error:
        raise UploadError(str(error)) from None
    return spec


def read_volume(paths: Sequence[str | os.PathLike], window: str = AUTO) -> Volume:
    """Read uploaded files into the images to describe, as ``ctscribe predict --slices all`` would.

    Several files are linked into one folder so the reader groups DICOM slices into series and
    orders them by position, whatever order the browser sent them in. Of several images or series,
    the first is used (the note says so).
    """
    paths = [Path(path) for path in paths if path]
    if not paths:
        raise UploadError("no file uploaded")
    if any(path.suffix.lower() == ".json" for path in paths):
        raise UploadError(UNSUPPORTED)
    if len(paths) == 1:
        items = list(iter_inputs(paths, window=window, slices="all"))
    else:
        with tempfile.TemporaryDirectory(prefix="ctscribe-upload-") as folder:
            for number, path in enumerate(paths):
                link = Path(folder) / path.name
                if link.exists():  # the same name from two folders
                    link = Path(folder) / f"{number}-{path.name}"
                link.symlink_to(path.resolve())
            items = list(iter_inputs([folder], window=window, slices="all"))
    # An image file, or the slices of one series or volume (numbered from 0), in the reader's order.
    groups: list[list] = []
    for item in items:
        if item.slice_index in (None, 0) or not groups:
            groups.append([])
        groups[-1].append(item)
    good = [group for group in groups if any(item.image is not None for item in group)]
    if not good:
        error = items[0].error if items else "nothing readable"
        raise UploadError(UNSUPPORTED if (error or "").startswith("unsupported file") else error)
    first = [item for item in good[0] if item.image is not None]
    return Volume(
        slices=tuple(item.image.convert("L") if item.window else item.image for item in first),
        names=tuple(Path(item.source).name for item in first),
        window=first[0].window,
        total=len(good[0]) if len(good[0]) > 1 else None,  # a single image or slice has no slider
        numbers=tuple(item.slice_index or 0 for item in first),
        note=f"first of {len(good)} images or series uploaded" if len(good) > 1 else "",
    )


def load_upload(
    paths: Sequence[str | os.PathLike], window: str = AUTO, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Upload:
    """The middle slice (or the image) of the uploaded files, prepared: what the page shows first."""
    volume = read_volume(paths, window)
    return volume.upload(volume.middle, max_pixels)


def take_uploads(paths: Sequence[str | os.PathLike]) -> list[tuple[str, bytes]]:
    """Each uploaded file's name and bytes, the file deleted from Gradio's temp folder once read (its
    per-upload folder too, when that leaves it empty): a DICOM's header names the patient."""
    held = []
    for path in map(Path, paths):
        held.append((path.name, path.read_bytes()))
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty, or already gone
            path.parent.rmdir()
    return held


def load_held(held: Sequence[tuple[str, bytes]], window: str) -> Volume:
    """:func:`read_volume` on files held in memory, written to a private folder for the one read."""
    with tempfile.TemporaryDirectory(prefix="ctscribe-upload-") as folder:
        paths = []
        for number, (name, data) in enumerate(held):
            path = Path(folder, str(number), name)  # a folder each: two uploads may share a name
            path.parent.mkdir()
            path.write_bytes(data)
            paths.append(path)
        return read_volume(paths, window)


def password_check(api_key: str | None):
    """The page's login check (any user name, the API key as password), or None without a key;
    compared in constant time so response times do not leak the key."""
    if not api_key:
        return None
    expected = api_key.encode()
    return lambda _user, password: hmac.compare_digest((password or "").encode(), expected)


def api_messages(history: Sequence[dict], data_url: str) -> list[dict]:
    """The conversation as OpenAI chat messages, the image in the first user turn (before its text,
    as Qwen2-VL was trained), so every follow-up is answered with the image in view."""
    messages = []
    for number, turn in enumerate(history):
        content: str | list[dict] = turn["content"]
        if number == 0:
            content = [
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "text", "text": turn["content"]},
            ]
        messages.append({"role": turn["role"], "content": content})
    return messages


def stream_reply(
    client, model: str, messages: list[dict], max_tokens: int, temperature: float = 0.0
) -> Iterator[tuple[str, list[dict]]]:
    """The assistant's reply as it grows, and its boxes once known, from a streamed chat completion.

    Boxes are ctscribe serve's extra field in the last chunk (in pixels of the image sent); another
    server's stream has none. Temperature 0 (greedy) by default: the same image and question give
    the same description, as in evaluation; the page offers more only as an option.
    """
    text, boxes = "", []
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, max_tokens=max_tokens, temperature=temperature
    )
    for chunk in stream:
        extra = getattr(chunk, "model_extra", None) or {}
        if isinstance(extra.get("boxes"), list) and extra["boxes"]:
            boxes = extra["boxes"]
            yield text, boxes
        if not chunk.choices:  # a usage-only chunk (vLLM)
            continue
        choice = chunk.choices[0]
        if choice.delta is not None and choice.delta.content:
            text += choice.delta.content
            yield text, boxes
        if choice.finish_reason == "error":  # ctscribe serve: generation failed after the stream began
            raise RuntimeError("generation failed on the model server; its log has the details")
    if not text.strip():
        raise RuntimeError("the model returned an empty reply")


def error_message(error: Exception, base_url: str) -> str:
    """A short sentence for the page: the server's own message for 4xx/5xx, never a traceback."""
    import openai

    if isinstance(error, UploadError | RuntimeError):
        return str(error)
    if isinstance(error, openai.OpenAIError):
        return server_error_message(error, base_url)
    return "unexpected error on the page server; its log has the details"


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


def build_page(
    api_base_url: str,
    api_key: str | None = None,
    model: str = "",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    prompts: Mapping[str, str] = DEFAULT_PROMPTS,
    language: str = "en",
):
    """The Gradio page, a client of the API at ``api_base_url`` (sending ``api_key`` as the bearer
    key when set). ``max_pixels`` should be the budget the model was trained with, ``prompts`` (per
    description language) and ``language`` what it was trained to answer (ctscribe.model_settings)."""
    import gradio as gr
    from openai import OpenAI

    # The openai client insists on a key; servers without one ignore it.
    client = OpenAI(base_url=api_base_url, api_key=api_key or "none", timeout=TIMEOUT_S, max_retries=2)
    reports = Path(tempfile.mkdtemp(prefix="ctscribe-reports-"))

    def cleared(upload: Upload | None, message: str = "") -> tuple:
        """The outputs of a fresh start on ``upload`` (None: no image): no conversation, no boxes."""
        empty = ([], [], gr.DownloadButton(value=None, interactive=False), [])
        if upload is None:
            return None, None, "", message, *empty
        return upload, upload.image, upload.info, message, *empty

    def read(held, window, custom, position=None):
        """Read the ``held`` uploads in the chosen window into the session's memory and show the
        slice at ``position`` (1-based, the slider's; None: the middle one); start afresh."""
        hidden = gr.Slider(visible=False)
        if not held:
            return None, hidden, *cleared(None)
        try:
            volume = load_held(held, window_spec(window, custom))
            place = volume.middle if position is None else int(position) - 1
            upload = volume.upload(place, max_pixels)
        except UploadError as error:
            return None, hidden, *cleared(None, f"**Error:** {error}")
        slider = hidden
        if len(volume.slices) > 1:
            slider = gr.Slider(
                visible=True,
                minimum=1,
                maximum=len(volume.slices),
                value=min(max(1, place + 1), len(volume.slices)),
            )
        return volume, slider, *cleared(upload)

    def on_files(files, window, custom):
        """An upload (one image, or all files of a series) is read into the session and deleted from
        disk at once; the file list is emptied, as its files are gone, and the image is shown."""
        files = [files] if isinstance(files, str) else list(files or [])
        held = take_uploads(files)
        return None, held, *read(held, window, custom)

    def pick(volume, position):
        """Show the slice the slider points at and start afresh: a description is of one slice."""
        if volume is None:
            return cleared(None)
        try:
            return cleared(volume.upload(int(position) - 1, max_pixels))
        except UploadError as error:
            return cleared(None, f"**Error:** {error}")

    def converse(upload, history, boxes, question, temperature=0.0, tokens=max_tokens):
        """Stream the reply to ``question`` into the chat; on failure keep the earlier conversation.

        The boxes of the latest reply that has any are drawn on the image (a follow-up without boxes
        leaves them); a new conversation starts without boxes.
        """
        question = (question or "").strip()
        report, unchanged = gr.DownloadButton(), gr.skip()
        if upload is None:
            yield history, history, "**Error:** upload an image first", report, question, unchanged, boxes
            return
        if not question:
            yield history, history, "**Error:** type a question first", report, question, unchanged, boxes
            return
        boxes = boxes if history else []
        asked = [*history, {"role": "user", "content": question}]
        shown = [*asked, {"role": "assistant", "content": ""}]
        yield history, shown, "Generating…", report, "", unchanged, boxes
        try:
            reply, found = "", []
            messages = api_messages(asked, upload.data_url)
            for step in stream_reply(client, model, messages, int(tokens), float(temperature)):
                reply, found = step
                partial = [*asked, {"role": "assistant", "content": reply}]
                yield history, partial, "Generating…", report, "", unchanged, boxes
        except Exception as error:  # every failure becomes a sentence on the page
            message = error_message(error, api_base_url)
            if message.startswith("unexpected"):
                log.exception("page request failed")
            else:
                log.warning("page request failed: %s", message)
            yield history, history, f"**Error:** {message}", report, question, unchanged, boxes
            return
        boxes = upload.shown_boxes(found) or boxes
        done = [*asked, {"role": "assistant", "content": reply}]
        path = write_report(reports, upload, done, model, boxes)
        drawn = draw_boxes(upload.image, boxes) if boxes else upload.image
        yield done, done, "", gr.DownloadButton(value=str(path), interactive=True), "", drawn, boxes

    def describe(upload, lang, temperature, tokens):
        """Describe the image afresh: a new conversation with the default prompt in the language."""
        prompt = prompts.get(lang) or DEFAULT_PROMPTS.get(lang, DEFAULT_PROMPTS["en"])
        yield from converse(upload, [], [], prompt, temperature, tokens)

    with gr.Blocks(title="ctscribe", analytics_enabled=False, delete_cache=(900, KEEP_REPORTS_S)) as page:
        gr.Markdown("# ctscribe: CT image descriptions")
        gr.Markdown(f"**Clinical notice.** {CLINICAL_NOTICE}", elem_id="clinical-notice")
        upload_state, history_state, boxes_state = gr.State(None), gr.State([]), gr.State([])
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(label="CT image", file_count="multiple", type="filepath", elem_id="upload")
                with gr.Row():
                    window = gr.Dropdown(WINDOW_CHOICES, value=AUTO, label="Window (DICOM, NIfTI)")
                    custom = gr.Textbox(label="Custom width/level (HU)", placeholder="400/50")
                lang = gr.Radio(LANGUAGES, value=language, label="Language of the description")
                preview = gr.Image(
                    label="Image", type="pil", format="png", interactive=False, elem_id="preview"
                )
                slider = gr.Slider(1, 2, value=1, step=1, label="Slice", visible=False, elem_id="slice")
                info = gr.Markdown(elem_id="image-info")
                with gr.Accordion("Options", open=False, elem_id="options"):
                    temperature = gr.Slider(
                        0, 1.5, value=0, step=0.1, label="Temperature (0: the same reply every time)"
                    )
                    tokens = gr.Slider(
                        16, MAX_TOKENS, value=max_tokens, step=16, label="Longest reply (tokens)"
                    )
            with gr.Column(scale=3):
                chat = gr.Chatbot(label=f"Model: {model}", elem_id="chat", feedback_options=None)
                status = gr.Markdown(elem_id="status")
                describe_button = gr.Button("Describe", variant="primary", elem_id="describe")
                question = gr.Textbox(label="Follow-up question about this image", elem_id="question")
                ask_button = gr.Button("Ask", elem_id="ask")
                report = gr.DownloadButton("Download report", interactive=False, elem_id="report")
        gr.Markdown(HELP)

        held_state = gr.State([])  # (name, bytes) of the uploaded files, in memory only
        volume_state = gr.State(None)  # the decoded, windowed slices (Volume), in memory only
        loaded = [upload_state, preview, info, status, history_state, chat, report, boxes_state]
        # .upload rather than .change: emptying the list from here must not re-trigger.
        files.upload(on_files, [files, window, custom], [files, held_state, volume_state, slider, *loaded])
        for event in (window.change, custom.submit):
            event(read, [held_state, window, custom, slider], [volume_state, slider, *loaded])
        # .input: the clinician moved it (not the page resetting it); only the last position counts.
        slider.input(pick, [volume_state, slider], loaded, trigger_mode="always_last")
        chatting = [history_state, chat, status, report, question, preview, boxes_state]
        # The model server queues and batches (and answers 503 when full): the page must not make
        # one clinician wait for another's description, so its own queue does not limit.
        sampling = [temperature, tokens]
        describe_button.click(describe, [upload_state, lang, *sampling], chatting, concurrency_limit=None)
        for event in (ask_button.click, question.submit):
            event(
                converse,
                [upload_state, history_state, boxes_state, question, *sampling],
                chatting,
                concurrency_limit=None,
            )
    return page


def main(argv: Sequence[str] | None = None) -> None:
    """Run the page alone in front of any OpenAI-compatible server (vLLM, or a remote ctscribe)."""
    parser = argparse.ArgumentParser(prog="python -m ctscribe.serve.web", description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True, help="the API root, e.g. http://gpu-host:8000/v1")
    parser.add_argument("--model", help="served model name (needed when /v1/models lists several)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind the page to")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    options = parser.parse_args(argv)
    api_key = os.environ.get("CTSCRIBE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    model = options.model
    if not model:  # the only model listed; with several (vLLM with LoRA lists the base too) ask for one
        from openai import OpenAI

        client = OpenAI(base_url=options.base_url, api_key=api_key or "none")
        listed = [entry.id for entry in client.models.list().data]
        model = choose_model(listed, None, options.base_url)
    page = build_page(options.base_url, api_key, model, max_pixels=options.max_pixels)
    page.launch(
        server_name=options.host, server_port=options.port, auth=password_check(api_key), run_history=False
    )


if __name__ == "__main__":
    main()
