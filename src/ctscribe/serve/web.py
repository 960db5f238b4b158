"""The clinicians' web page: upload a CT image, get a description, ask follow-ups, download a report;
for a series or volume, describe the whole series and step through its findings.

``ctscribe serve`` mounts the page at ``/``. It talks to the API through the same client as
``--backend openai`` (:class:`~ctscribe.generate.openai_engine.OpenAIEngine`, over loopback HTTP): one
place converts the messages, sends the image as a lossless PNG, reads the stream and finds the key.
The client keeps the model's grounding markup, so the page maps each box from the model's grid
through the crop and resize of the slice (:class:`~ctscribe.ct.uploads.Upload`'s frame) onto the
slice shown, and draws it there, numbered as the text numbers it ("[box 1]") (:mod:`ctscribe.serve.
report`); the text shown is the reader's text (:class:`~ctscribe.serve.chat.Answer`, as the API's).
Uploads are read by :mod:`ctscribe.ct.uploads`: into the session's memory, the files deleted at once.
Nothing of a DICOM header is shown, logged or written to the report; conversations are not logged.

**Describe the whole series** describes every slice of the uploaded series or volume through the same
client, in batches the server batches further, and gathers the findings the slices state over
neighbouring slices as ``ctscribe study`` does (:func:`ctscribe.study.grouping.group_findings`: a slice
model does not see across slices, docs/STUDY.md says what that grouping can and cannot tell). Choosing
a finding moves the slider to its key slice and draws its box there. Nothing of it is written to disk.

Each part of the page is a function of the session's state (the held files, the volume, the slice,
the conversation and its boxes), wired to the components in :func:`build_page`.
"""

from __future__ import annotations

import hmac
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ctscribe import CLINICAL_NOTICE
from ctscribe.conversation.boxes import Located
from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.ct.uploads import Upload, UploadError, Volume, load_held, take_uploads, window_spec
from ctscribe.ct.windows import AUTO, CUSTOM, PRESETS
from ctscribe.generate.engine import DEFAULT_MAX_NEW_TOKENS, GenerationRequest
from ctscribe.generate.openai_engine import OpenAIEngine, ServerError
from ctscribe.model_settings import DEFAULT_MAX_PIXELS
from ctscribe.models.family import ImageGrid
from ctscribe.serve.chat import Answer
from ctscribe.serve.report import KEEP_REPORTS_S, draw_boxes, write_report
from ctscribe.study.grouping import StudyFinding, group_findings

log = logging.getLogger(__name__)

WINDOW_CHOICES = [AUTO, *PRESETS, CUSTOM]
LANGUAGES = [("English", "en"), ("中文", "zh")]
MAX_TOKENS = 1024  # the page's limit; ctscribe serve allows 2048
# Slices sent together by "Describe the whole series": enough for the server to batch, few enough that
# the progress line moves and one clinician's series does not fill the server's queue alone.
SERIES_BATCH = 8
HELP = (
    "Upload a CT image (PNG or JPG), a DICOM file, all DICOM files of one series, or a NIfTI volume; "
    "for a series or volume, pick the slice with the slider (the middle one first). Then **Describe**, "
    "and ask follow-up questions about the same slice; where the answer points, a numbered box is "
    "drawn on the image. DICOM headers are read only for the image and the window: no patient data "
    "is shown. **Describe the whole series** describes every slice and lists the findings it gathers "
    "over neighbouring slices; choose one to go to its key slice."
)


def finding_label(number: int, finding: StudyFinding) -> str:
    """How the page lists a study finding: its number, what it is, and its slices as the slider counts."""
    first, last, key = finding.first + 1, finding.last + 1, finding.key_slice + 1
    span = f"slice {first}" if first == last else f"slices {first}-{last}"
    return f"{number}. {finding.key.label()}: {span} (key slice {key})"


def key_box(finding: StudyFinding, located: Sequence[Located]) -> list[Located]:
    """The finding's box among its key slice's boxes, as the page draws boxes (none without one)."""
    return [box for box in located if box.pixels is not None and list(box.pixels) == finding.box][:1]


def password_check(api_key: str | None):
    """The page's login check (any user name, the API key as password), or None without a key;
    compared in constant time so response times do not leak the key."""
    if not api_key:
        return None
    expected = api_key.encode()
    return lambda _user, password: hmac.compare_digest((password or "").encode(), expected)


def page_messages(history: Sequence[dict]) -> list[dict]:
    """The conversation as the engine's messages, the image in the first user turn (before its text,
    as the base models were trained), so every follow-up is answered with the image in view."""
    messages = []
    for number, turn in enumerate(history):
        content: str | list[dict] = turn["content"]
        if number == 0:
            content = [{"type": "image"}, {"type": "text", "text": turn["content"]}]
        messages.append({"role": turn["role"], "content": content})
    return messages


class EmptyReplyError(RuntimeError):
    """The model answered nothing a reader could see."""


def error_message(error: Exception) -> str:
    """A short sentence for the page, never a traceback: the client's own sentence for a server that
    failed (:class:`~ctscribe.generate.openai_engine.ServerError`), the reason for an upload."""
    if isinstance(error, UploadError | ServerError | EmptyReplyError):
        return str(error)
    return "unexpected error on the page server; its log has the details"


def build_page(
    api_base_url: str,
    api_key: str | None = None,
    model: str = "",
    *,
    grid: ImageGrid,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    prompts: Mapping[str, str] = DEFAULT_PROMPTS,
    language: str = "en",
):
    """The Gradio page, a client of the API at ``api_base_url`` (sending ``api_key`` as the bearer
    key when set). ``grid`` is the served model's image grid, ``max_pixels`` the budget it was trained
    with, ``prompts`` (per description language) and ``language`` what it was trained to answer
    (ctscribe.model_settings)."""
    import gradio as gr

    # The server is not up yet while the page is built: the model is taken on trust (verify=False).
    client = OpenAIEngine(
        api_base_url, model, api_key=api_key, max_pixels=max_pixels, grid=grid, verify=False
    )
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
            upload = volume.upload(place, max_pixels, grid=grid)
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
            return cleared(volume.upload(int(position) - 1, max_pixels, grid=grid))
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
        # Greedy by default: the same image and question give the same description, as in evaluation.
        request = GenerationRequest(
            page_messages(asked), [upload.sent], max_new_tokens=int(tokens), temperature=float(temperature)
        )
        answer, raw = Answer(upload.frame, keep_markup=False), ""
        try:
            for raw in client.text_so_far(request):
                partial = [*asked, {"role": "assistant", "content": answer.shown_so_far(raw)}]
                yield history, partial, "Generating…", report, "", unchanged, boxes
            reply = answer.text(raw)
            if not reply.strip():
                raise EmptyReplyError("the model returned an empty reply")
        except Exception as error:  # every failure becomes a sentence on the page
            message = error_message(error)
            if message.startswith("unexpected"):
                log.exception("page request failed")
            else:
                log.warning("page request failed: %s", message)
            yield history, history, f"**Error:** {message}", report, question, unchanged, boxes
            return
        boxes = answer.located(raw) or boxes
        done = [*asked, {"role": "assistant", "content": reply}]
        path = write_report(reports, upload, done, model, boxes)
        drawn = draw_boxes(upload.image, boxes) if boxes else upload.image
        yield done, done, "", gr.DownloadButton(value=str(path), interactive=True), "", drawn, boxes

    def describe(upload, lang, temperature, tokens):
        """Describe the image afresh: a new conversation with the default prompt in the language."""
        prompt = prompts.get(lang) or DEFAULT_PROMPTS.get(lang, DEFAULT_PROMPTS["en"])
        yield from converse(upload, [], [], prompt, temperature, tokens)

    def describe_series(volume: Volume | None, lang: str, tokens: float):
        """Describe every slice of the series and gather its findings, with progress; see the module
        docstring. Yields (findings state, findings list, status)."""
        hidden = gr.Radio(choices=[], value=None, visible=False)
        if volume is None or len(volume.slices) < 2:
            yield [], hidden, "**Error:** upload a DICOM series or a NIfTI volume first"
            return
        prompt = prompts.get(lang) or DEFAULT_PROMPTS.get(lang, DEFAULT_PROMPTS["en"])
        total, records, located, unread = len(volume.slices), [], {}, 0
        try:
            for start in range(0, total, SERIES_BATCH):
                uploads = {}
                for position in range(start, min(start + SERIES_BATCH, total)):
                    try:
                        uploads[position] = volume.upload(position, max_pixels, grid=grid)
                    except UploadError:
                        unread += 1  # counted and said below; its neighbours are still read
                requests = [
                    GenerationRequest(
                        page_messages([{"role": "user", "content": prompt}]), [u.sent], int(tokens)
                    )
                    for u in uploads.values()
                ]
                for (position, upload), result in zip(
                    uploads.items(), client.generate(requests), strict=True
                ):
                    answer = Answer(upload.frame, keep_markup=False)
                    located[position] = answer.located(result.text)
                    records.append(
                        {
                            "slice": position,
                            "text": answer.text(result.text),
                            "boxes": answer.boxes(result.text),
                        }
                    )
                yield [], hidden, f"Described {start + len(uploads)} of {total} slices…"
        except Exception as error:  # every failure becomes a sentence on the page
            log.warning("series request failed: %s", error_message(error))
            yield [], hidden, f"**Error:** {error_message(error)}"
            return
        findings = [
            (finding, key_box(finding, located[finding.key_slice])) for finding in group_findings(records)
        ]
        labels = [finding_label(n, finding) for n, (finding, _) in enumerate(findings, start=1)]
        note = f" ({unread} slice(s) could not be read)" if unread else ""
        summary = f"{len(findings)} finding(s) over {total} slices{note}. Choose one to go to its key slice."
        yield findings, gr.Radio(choices=labels, value=None, visible=bool(labels), type="index"), summary

    def show_finding(volume: Volume | None, findings: list, chosen: int | None):
        """Move the slider to the chosen finding's key slice and draw its box there (a fresh start)."""
        if volume is None or chosen is None or not 0 <= chosen < len(findings):
            return gr.skip(), *[gr.skip()] * 8
        finding, box = findings[chosen]
        try:
            upload = volume.upload(finding.key_slice, max_pixels, grid=grid)
        except UploadError as error:
            return gr.skip(), *cleared(None, f"**Error:** {error}")
        fresh = list(cleared(upload))
        fresh[1] = draw_boxes(upload.image, box) if box else upload.image
        fresh[7] = box
        return gr.Slider(value=finding.key_slice + 1), *fresh

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
                series_button = gr.Button("Describe the whole series", elem_id="describe-series")
                series_findings = gr.Radio(
                    [], label="Study findings (choose one)", visible=False, elem_id="study-findings"
                )
        gr.Markdown(HELP)

        held_state = gr.State([])  # (name, bytes) of the uploaded files, in memory only
        volume_state = gr.State(None)  # the decoded, windowed slices (Volume), in memory only
        findings_state = gr.State([])  # the series' study findings, each with its key slice's box
        loaded = [upload_state, preview, info, status, history_state, chat, report, boxes_state]

        def forget_findings():
            """A new upload or window: the findings were of other slices."""
            return [], gr.Radio(choices=[], value=None, visible=False)

        # .upload rather than .change: emptying the list from here must not re-trigger.
        files.upload(
            on_files, [files, window, custom], [files, held_state, volume_state, slider, *loaded]
        ).then(forget_findings, None, [findings_state, series_findings])
        for event in (window.change, custom.submit):
            event(read, [held_state, window, custom, slider], [volume_state, slider, *loaded]).then(
                forget_findings, None, [findings_state, series_findings]
            )
        series_button.click(
            describe_series,
            [volume_state, lang, tokens],
            [findings_state, series_findings, status],
            concurrency_limit=None,
        )
        series_findings.input(
            show_finding, [volume_state, findings_state, series_findings], [slider, *loaded]
        )
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
