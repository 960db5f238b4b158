"""The clinicians' page: its pure functions, then the real page in Debian's chromium via Playwright."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ctscribe import CLINICAL_NOTICE
from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.ct.uploads import (
    NO_WINDOW,
    UNSUPPORTED,
    Upload,
    UploadError,
    load_held,
    load_upload,
    read_volume,
    take_uploads,
    window_spec,
)
from ctscribe.ct.windows import AUTO
from ctscribe.fixtures.dicom_samples import pydicom_ct_slices, write_sentinel_dicom
from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.generate.engine import GenerationRequest
from ctscribe.generate.openai_engine import OpenAIEngine, ServerError, openai_messages
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.serve.chat import Answer
from ctscribe.serve.report import BOX_COLOUR, draw_boxes, report_markdown, write_report
from ctscribe.serve.web import EmptyReplyError, error_message, page_messages, password_check
from support.servers import app_in_thread, free_port

CT_SMALL = pydicom_ct_slices()["CT_small.dcm"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "page-key-123"


# --- reading uploads ----------------------------------------------------------------------------------


def test_dicom_upload_is_windowed_and_labelled():
    upload = load_upload([CT_SMALL], grid=DEFAULT_FAMILY.grid)
    assert upload.name == "CT_small.dcm"
    assert upload.window.startswith("soft-tissue 400/50 (auto: HU histogram")
    assert upload.image.mode == "RGB" and upload.image.size == (128, 128)
    assert upload.sent.size[0] * upload.sent.size[1] <= 262_144  # fitted to the default budget
    assert "CT_small.dcm" in upload.info and "soft-tissue 400/50" in upload.info


def test_window_presets_and_custom_windows_change_the_pixels():
    lung = load_upload([CT_SMALL], window_spec("lung"), grid=DEFAULT_FAMILY.grid)
    custom = load_upload([CT_SMALL], window_spec("custom", " 400/50 "), grid=DEFAULT_FAMILY.grid)
    assert lung.window == "lung 1500/-600"
    assert custom.window == "400/50"
    assert not np.array_equal(np.asarray(lung.image), np.asarray(custom.image))


@pytest.mark.parametrize("custom", ["", "wide", "0/40"])
def test_bad_custom_windows_are_explained(custom):
    with pytest.raises(UploadError, match=r"WIDTH/LEVEL|window"):
        window_spec("custom", custom)


def test_image_upload_is_not_windowed(tmp_path):
    path = tmp_path / "slice.png"
    Image.fromarray(np.tile(np.arange(128, dtype=np.uint8), (128, 1))).save(path)
    upload = load_upload([path], window_spec("lung"), grid=DEFAULT_FAMILY.grid)
    assert upload.window is None and NO_WINDOW in upload.info and upload.name == "slice.png"


def test_bad_uploads_are_explained(tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_text("not an image")
    with pytest.raises(UploadError) as caught:
        load_upload([fake], grid=DEFAULT_FAMILY.grid)
    assert "Traceback" not in str(caught.value) and str(caught.value)
    for name in ("notes.txt", "test.json"):
        (tmp_path / name).write_text("{}")
        with pytest.raises(UploadError, match="unsupported file"):
            load_upload([tmp_path / name], grid=DEFAULT_FAMILY.grid)
    with pytest.raises(UploadError, match="no file"):
        load_upload([], grid=DEFAULT_FAMILY.grid)
    assert "PNG or JPG" in UNSUPPORTED


def test_series_upload_uses_the_middle_slice_by_position(tmp_path):
    import pydicom

    # Three slices of one series whose file names sort in a different order than their positions.
    for name, z in (("a.dcm", 20.0), ("b.dcm", 0.0), ("c.dcm", 10.0)):
        dataset = pydicom.dcmread(CT_SMALL)
        position = [float(value) for value in dataset.ImagePositionPatient]
        dataset.ImagePositionPatient = [position[0], position[1], z]
        dataset.save_as(tmp_path / name)
    upload = load_upload([tmp_path / name for name in ("a.dcm", "b.dcm", "c.dcm")], grid=DEFAULT_FAMILY.grid)
    assert upload.name == "c.dcm"
    assert upload.slice == (2, 3) and "**Slice:** 2 of 3" in upload.info


def test_report_has_the_notice_and_no_dicom_identifiers(tmp_path, caplog):
    caplog.set_level("DEBUG")
    secrets = write_sentinel_dicom(tmp_path / "slice.dcm")
    upload = load_upload([tmp_path / "slice.dcm"], grid=DEFAULT_FAMILY.grid)
    history = [
        {"role": "user", "content": DEFAULT_PROMPTS["en"]},
        {"role": "assistant", "content": "Axial CT of the upper abdomen."},
        {"role": "user", "content": "Any free fluid?"},
        {"role": "assistant", "content": "No free fluid is seen."},
    ]
    when = datetime(2025, 1, 2, 3, 4, tzinfo=UTC)
    report = report_markdown(upload, history, "ct-2b", when)
    assert report.count(CLINICAL_NOTICE) == 2 and "Slice" not in report and "Boxes" not in report
    for expected in (
        "slice.dcm",
        upload.window,
        "ct-2b",
        "2025-01-02 03:04",
        "Any free fluid?",
        "No free fluid",
    ):
        assert expected in report
    shown = report + upload.info + caplog.text
    for secret in secrets:
        assert secret not in shown


def test_uploads_are_deleted_once_read_and_windowed_again_from_memory(tmp_path, monkeypatch):
    gradio_temp = tmp_path / "gradio" / "3f2a9c"  # Gradio's layout: a folder per upload
    gradio_temp.mkdir(parents=True)
    secrets = write_sentinel_dicom(gradio_temp / "patient.dcm")
    held = take_uploads([gradio_temp / "patient.dcm"])
    assert not (tmp_path / "gradio" / "3f2a9c").exists()
    assert held[0][0] == "patient.dcm" and secrets[0].encode() in held[0][1]
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    volume = load_held(held, window_spec("lung"))
    lung = volume.upload(volume.middle, LEARNING_PIXELS, grid=DEFAULT_FAMILY.grid)
    assert lung.name == "patient.dcm" and lung.window == "lung 1500/-600"
    assert (
        lung.sent.tobytes()
        == load_upload([CT_SMALL], "lung", LEARNING_PIXELS, grid=DEFAULT_FAMILY.grid).sent.tobytes()
    )  # same pixels
    assert list(private.iterdir()) == []  # the private copy lasted one read


def test_password_is_compared_in_constant_time(monkeypatch):
    import hmac

    calls = []
    compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or compare(a, b))
    check = password_check(KEY)
    assert check("anyone", KEY) is True
    assert check("anyone", "page-key-12") is False and check("anyone", None) is False
    assert calls == [(KEY.encode(), KEY.encode()), (b"page-key-12", KEY.encode()), (b"", KEY.encode())]
    assert password_check(None) is None and password_check("") is None


SLICES = 5


def _spot_volume(path: Path) -> Path:
    """A NIfTI volume: a soft-tissue body in air, and a bone-bright spot that moves with the slice."""
    import nibabel as nib

    hu = np.full((96, 80, SLICES), -1000, dtype=np.int16)
    hu[10:90, 8:76, :] = 40
    for z in range(SLICES):
        hu[20 + 12 * z : 30 + 12 * z, 34:44, z] = 1000
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    return path


def _spot(image: Image.Image) -> tuple[int, int, int, int]:
    """The inclusive pixel box of the white spot in a shown slice."""
    rows, cols = np.nonzero(np.asarray(image.convert("L")) == 255)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def _reply_with_box(upload: Upload) -> str:
    """What ctscribe serve with the bright-spot stand-in engine answers for ``upload``, with the
    markup the page's client keeps: the stand-in's answer for the image as the API prepares it."""
    from ctscribe.ct.images import ImageOptions, prepare_image
    from support.pointing import answer_for

    return answer_for(
        prepare_image(upload.sent, ImageOptions(max_pixels=LEARNING_PIXELS), grid=DEFAULT_FAMILY.grid).image
    )


def test_a_volume_keeps_every_slice_and_the_slider_position_picks_the_one_described(tmp_path):
    volume = load_held([("case.nii.gz", _spot_volume(tmp_path / "case.nii.gz").read_bytes())], AUTO)
    assert len(volume.slices) == SLICES and volume.middle == 2
    uploads = [
        volume.upload(position, LEARNING_PIXELS, grid=DEFAULT_FAMILY.grid) for position in range(SLICES)
    ]
    assert [upload.slice for upload in uploads] == [(n, SLICES) for n in range(1, SLICES + 1)]
    assert "**Slice:** 2 of 5" in uploads[1].info
    assert len({upload.sent.tobytes() for upload in uploads}) == SLICES  # each slice is its own image
    assert len({_spot(upload.image) for upload in uploads}) == SLICES  # the spot moves
    single = load_upload([CT_SMALL], grid=DEFAULT_FAMILY.grid)
    assert single.slice is None and "Slice" not in single.info  # a single slice has no slider


def test_the_apis_boxes_are_drawn_on_the_shown_slice_where_the_spot_is(tmp_path):
    volume = load_held([("case.nii.gz", _spot_volume(tmp_path / "case.nii.gz").read_bytes())], AUTO)
    upload = volume.upload(1, LEARNING_PIXELS, grid=DEFAULT_FAMILY.grid)
    assert upload.frame.crop is not None  # the air around the body was cut before the model saw it
    (box,) = Answer(upload.frame, keep_markup=False).located(_reply_with_box(upload))
    spot = _spot(upload.image)
    assert max(abs(a - b) for a, b in zip(box.pixels, spot, strict=True)) <= 2, (box.pixels, spot)
    drawn = np.asarray(draw_boxes(upload.image, [box]))
    amber = np.all(drawn == BOX_COLOUR, axis=2)
    x0, y0, x1, y1 = box.pixels
    assert amber[(y0 + y1) // 2, x0] and amber[(y0 + y1) // 2, x1] and amber[y0, (x0 + x1) // 2]
    assert not amber[(y0 + y1) // 2, (x0 + x1) // 2]  # an outline: the spot stays visible
    assert (
        np.asarray(upload.image).shape == drawn.shape
        and not np.all(np.asarray(upload.image) == BOX_COLOUR, axis=2).any()
    )
    history = [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "A [box 1]."}]
    report = report_markdown(upload, history, "m", datetime(2025, 1, 2, tzinfo=UTC), [box])
    assert "- Slice: 2 of 5 (the slice described)" in report
    assert f"1. the bright spot: x {x0}-{x1}, y {y0}-{y1}" in report


# --- talking to the API -------------------------------------------------------------------------------


def test_image_goes_in_the_first_user_turn_only():
    history = [
        {"role": "user", "content": "Describe."},
        {"role": "assistant", "content": "A chest CT."},
        {"role": "user", "content": "Any nodule?"},
    ]
    image = Image.new("RGB", (28, 28))
    messages = openai_messages(GenerationRequest(page_messages(history), [image]))
    assert messages[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert messages[0]["content"][1:] == [{"type": "text", "text": "Describe."}]
    assert messages[1:] == history[1:]


class FakeClient:
    """Just enough of ``openai.OpenAI`` to replay a stream of chunks."""

    def __init__(self, chunks):
        self.sent = None

        def create(**request):
            self.sent = request
            return iter(chunks)

        self.chat = SimpleNamespace(completions=SimpleNamespace(create=create))


def _chunk(content=None, finish=None, usage=None):
    if content is None and finish is None:
        return SimpleNamespace(choices=[], usage=usage)  # the usage chunk
    delta = SimpleNamespace(content=content)
    return SimpleNamespace(choices=[SimpleNamespace(delta=delta, finish_reason=finish)], usage=None)


def _page_client(chunks) -> OpenAIEngine:
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m", verify=False)
    engine.client = FakeClient(chunks)
    return engine


def test_the_reply_grows_and_its_box_is_shown_whole_and_located():
    """The page reads the stream through the openai backend's client (markup kept) and shows the
    reader's text: never half a box; the box is located from the markup."""
    raw = "A <|object_ref_start|>spot<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> here."
    # as a server streams it: a special token whole, the rest a few characters at a time
    pieces = re.findall(r"<\|[a-z_]+\|>|[^<]{1,4}", raw)
    usage = SimpleNamespace(prompt_tokens=5, completion_tokens=9)
    engine = _page_client([_chunk(""), *map(_chunk, pieces), _chunk(finish="stop"), _chunk(usage=usage)])
    request = GenerationRequest(
        page_messages([{"role": "user", "content": "Describe."}]), [Image.new("RGB", (8, 8))]
    )
    grown = list(engine.text_so_far(request))
    assert grown[-1] == raw and all(raw.startswith(text) for text in grown) and len(grown) > 3
    answer = Answer(None, keep_markup=False)
    shown = [answer.shown_so_far(text) for text in grown]
    assert not any("<|" in text or "(100" in text for text in shown)
    assert answer.text(raw) == "A spot [box 1] here." and [box.phrase for box in answer.located(raw)] == [
        "spot"
    ]
    sent = engine.client.sent
    assert (
        sent["stream"] is True
        and sent["temperature"] == 0.0
        and sent["extra_body"]["skip_special_tokens"] is False
    )


def test_a_failure_after_the_stream_began_is_a_server_error():
    engine = _page_client([_chunk("A"), _chunk(finish="error")])
    request = GenerationRequest([{"role": "user", "content": "Describe."}])
    with pytest.raises(ServerError, match="generation failed"):
        list(engine.text_so_far(request))


def test_api_errors_become_sentences():
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIEngine(url, "m", verify=False)
    engine.client = engine.client.with_options(max_retries=0)
    with pytest.raises(ServerError) as caught:
        list(engine.text_so_far(GenerationRequest([{"role": "user", "content": "Describe."}])))
    assert error_message(caught.value) == f"cannot reach the model server at {url}; is it running?"
    assert error_message(UploadError("no file uploaded")) == "no file uploaded"
    assert error_message(EmptyReplyError("the model returned an empty reply")).endswith("empty reply")
    assert error_message(KeyError("x")).startswith("unexpected error")


# --- the real page in a real browser ------------------------------------------------------------------


def _missing_browser() -> str | None:
    """Why the browser test cannot run here (``make chromium`` installs Debian's chromium), or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: install Debian's chromium with `make chromium`"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@dataclass(frozen=True)
class PageServer:
    url: str
    log: Path  # the server's stdout and stderr
    temp: Path  # its temp folders: Gradio's (GRADIO_TEMP_DIR) and Python's (TMPDIR)


@pytest.fixture(scope="module")
def page_server(request, tmp_path_factory):
    """``ctscribe serve`` with the page and an API key, in its own process group, always stopped."""
    missing = _missing_browser()
    if missing:  # before the model is built: a skip costs nothing
        request.getfixturevalue("unavailable")(missing)
    # The trained tiny model (shared by the session): its greedy answers are real text ("CT of the
    # ..."), where the random model's are whitespace that the engine strips to nothing.
    model = request.getfixturevalue("trained_run") / "model"
    folder = tmp_path_factory.mktemp("web")
    log, temp = folder / "server.log", folder / "temp"
    for name in ("gradio", "tmp"):
        (temp / name).mkdir(parents=True)
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp / "gradio"), "TMPDIR": str(temp / "tmp")}
    server = request.getfixturevalue("start_server")(model, log, "--api-key", KEY, web=True, env=env)
    try:
        yield PageServer(server.url, log, temp)
    finally:
        server.stop()


def _stand_in_page(request, engine):
    """The page and API in this process in front of a stand-in ``engine``: no model to load, so it
    starts in seconds."""
    missing = _missing_browser()
    if missing:
        request.getfixturevalue("unavailable")(missing)
    from ctscribe.serve.app import build_server
    from ctscribe.serve.options import ServeOptions

    port = free_port()  # the page calls the API on its own port
    app = build_server(engine, ServeOptions(port=port))
    try:
        with app_in_thread(app, start_s=60, port=port) as url:
            yield url
    finally:
        app.state.batcher.close()


@pytest.fixture(scope="module")
def spot_page(request):
    """In front of the bright-spot stand-in engine (tests/support/pointing): no model writes boxes
    yet, and this server tests how the page maps and draws them."""
    from support.pointing import BrightSpotEngine

    yield from _stand_in_page(request, BrightSpotEngine(LEARNING_PIXELS))


@pytest.fixture(scope="module")
def study_page(request):
    """In front of the phantom reader stand-in (tests/support/study_reader.py): it states each
    slice's region, the lesion it sees, its side and its box, as a model trained on whole series
    would; this server tests how the page gathers and shows a series' findings."""
    from support.study_reader import PhantomReaderEngine

    yield from _stand_in_page(request, PhantomReaderEngine(LEARNING_PIXELS))


@pytest.fixture(scope="module")
def browser(request):
    """Debian's chromium driven by Playwright; Playwright's own browsers are never downloaded."""
    missing = _missing_browser()
    if missing:
        request.getfixturevalue("unavailable")(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, url: str):
    """A fresh page that may reach the server on loopback only: the page must work offline."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort()
    )
    page.goto(url + "/")
    return page


def _log_in(page, password: str) -> None:
    page.get_by_label("username").fill("clinician")
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


@pytest.mark.slow
def test_login_form_refuses_a_wrong_key_and_admits_the_right_one(page_server, browser):
    page = _open(browser, page_server.url)
    try:
        _log_in(page, "wrong-key")
        page.get_by_text("Incorrect Credentials").wait_for()
        assert page.locator("#clinical-notice").count() == 0
        _log_in(page, KEY)
        page.locator("#clinical-notice").wait_for()
    finally:
        page.close()


@pytest.mark.slow
def test_describe_and_follow_up_in_a_real_browser(page_server, browser, tmp_path):
    load_upload([CT_SMALL], grid=DEFAULT_FAMILY.grid).image.save(tmp_path / "ct.png")
    page = _open(browser, page_server.url)
    try:
        _log_in(page, KEY)
        notice = page.locator("#clinical-notice")
        notice.wait_for()
        assert CLINICAL_NOTICE in notice.inner_text()

        page.locator("#ask").click()  # nothing uploaded yet: a sentence, not a traceback
        page.locator("#status").get_by_text("upload an image first").wait_for()

        upload = page.locator("#upload input[type=file]")
        upload.set_input_files(CT_SMALL)  # DICOM is read and windowed on the server
        page.locator("#image-info").get_by_text("soft-tissue 400/50 (auto:").wait_for()
        upload.set_input_files(tmp_path / "ct.png")  # a new upload replaces the image
        page.locator("#image-info").get_by_text("ct.png").wait_for()
        assert "CT_small.dcm" not in page.locator("#upload").inner_text()
        page.get_by_text("Options").click()
        box = page.get_by_label("number input for Longest reply", exact=False)
        box.fill("24")
        box.press("Enter")

        page.locator("#describe").click()
        bot = page.locator('#chat [data-testid="bot"]')
        bot.first.wait_for()
        page.wait_for_function(
            "() => document.querySelectorAll('#chat [data-testid=\"bot\"]').length === 1"
            " && document.querySelector('#chat [data-testid=\"bot\"]').innerText.trim().length > 0"
            " && document.querySelector('#status').innerText.trim() === ''"
        )
        first = bot.first.inner_text().strip()
        assert first.startswith("CT of the"), first  # greedy: what the trained model says

        page.locator("#question textarea").fill("Is there any free fluid?")
        page.locator("#ask").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#chat [data-testid=\"bot\"]').length === 2"
            " && document.querySelector('#status').innerText.trim() === ''"
        )
        assert bot.nth(1).inner_text().strip()

        with page.expect_download() as download:
            page.locator("#report").click()
        report = Path(download.value.path()).read_text(encoding="utf-8")
        for expected in (CLINICAL_NOTICE, "ct.png", DEFAULT_PROMPTS["en"], "Is there any free fluid?"):
            assert expected in report
        assert report.count("**ctscribe:**") == 2

        assert notice.is_visible()
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.is_file() and shot.stat().st_size > 20_000
    finally:
        page.close()


@pytest.mark.slow
def test_dicom_identifiers_leave_no_trace_in_the_page_the_log_or_the_temp_folders(
    page_server, browser, tmp_path
):
    secrets = write_sentinel_dicom(tmp_path / "patient.dcm")
    page = _open(browser, page_server.url)
    try:
        _log_in(page, KEY)
        page.locator("#upload input[type=file]").set_input_files(tmp_path / "patient.dcm")
        page.locator("#image-info").get_by_text("patient.dcm").wait_for()
        page.get_by_label("Window (DICOM, NIfTI)").fill("lung")  # read again, from the session's memory
        page.get_by_role("option", name="lung", exact=True).click()
        page.locator("#image-info").get_by_text("lung 1500/-600").wait_for()
        page.locator("#describe").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#chat [data-testid=\"bot\"]').length === 1"
            " && document.querySelector('#status').innerText.trim() === ''"
        )
        shown = page.content() + page.inner_text("body")
    finally:
        page.close()
    assert "patient.dcm" in shown  # the page did show this upload
    files = [path for path in page_server.temp.rglob("*") if path.is_file()]
    # Control: these are the folders the server uses (Gradio copied the report it serves there).
    assert any(path.name.startswith("ctscribe-report-") for path in files)
    logged = page_server.log.read_text(encoding="utf-8", errors="replace")
    for secret in secrets:
        assert secret not in shown and secret not in logged, secret
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path)


def test_upload_dataclass_info_mentions_notes():
    upload = Upload(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)), "x.dcm", "lung 1500/-600", "note")
    assert upload.info.endswith("· note")


def test_write_report_uses_a_fresh_file_and_drops_old_ones(tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    os.utime(stale, (0, 0))
    upload = Upload(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)), "x.png", None)
    history = [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "A CT."}]
    first, second = (write_report(tmp_path, upload, history, "m") for _ in range(2))
    assert first != second and first.name.startswith("ctscribe-report-") and first.suffix == ".md"
    assert CLINICAL_NOTICE in first.read_text(encoding="utf-8")
    assert not stale.exists()


def _preview(page, base_url: str) -> Image.Image:
    """The image the page shows, as the browser fetched it."""
    import io

    source = page.locator("#preview img").get_attribute("src")
    url = source if source.startswith(("http", "data:")) else base_url + "/" + source.lstrip("/")
    return Image.open(io.BytesIO(page.request.get(url).body())).convert("RGB")


@pytest.mark.slow
def test_the_slice_slider_picks_the_slice_described_and_the_box_is_drawn_on_it(spot_page, browser, tmp_path):
    """With the bright-spot stand-in engine (see spot_page): the slider changes the slice shown, sent
    and named in the report, and the answer's box is drawn on that slice around its spot."""
    volume = _spot_volume(tmp_path / "case.nii.gz")
    expected = read_volume([volume]).upload(
        1, LEARNING_PIXELS, grid=DEFAULT_FAMILY.grid
    )  # slice 2 of 5, as the page will show it
    page = _open(browser, spot_page)
    try:
        page.locator("#upload input[type=file]").set_input_files(volume)
        page.locator("#image-info").get_by_text("Slice: 3 of 5").wait_for()
        number = page.get_by_label("number input for Slice", exact=False)
        number.fill("2")
        number.press("Enter")
        page.locator("#image-info").get_by_text("Slice: 2 of 5").wait_for()
        page.locator("#describe").click()
        page.wait_for_function(
            "() => document.querySelector('#chat [data-testid=\"bot\"]')?.innerText.includes('[box 1]')"
            " && document.querySelector('#status').innerText.trim() === ''"
        )
        reply = page.locator('#chat [data-testid="bot"]').first.inner_text()
        assert "the bright spot [box 1]" in reply and "<|" not in reply
        deadline = time.monotonic() + 30
        while True:  # the drawn image replaces the plain one with the reply's last update
            shown = np.asarray(_preview(page, spot_page))
            amber = np.all(np.abs(shown.astype(int) - BOX_COLOUR) <= 8, axis=2)
            if amber.any() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert shown.shape[:2] == expected.image.size[::-1]
        x0, y0, x1, y1 = _spot(expected.image)
        middle = amber[y0 + 2 : y1 - 1]  # rows through the spot: the outline's sides, not its number tag
        columns = np.flatnonzero(middle.any(axis=0))
        assert columns.size, "no box drawn on the image shown"
        assert abs(columns.min() - x0) <= 2 and abs(columns.max() - x1) <= 2, (columns, x0, x1)
        with page.expect_download() as download:
            page.locator("#report").click()
        report = Path(download.value.path()).read_text(encoding="utf-8")
        assert "- Slice: 2 of 5 (the slice described)" in report and "1. the bright spot: x" in report

        number.fill("4")  # another slice: a fresh start on it, without the old box
        number.press("Enter")
        page.locator("#image-info").get_by_text("Slice: 4 of 5").wait_for()
        page.wait_for_function("() => document.querySelectorAll('#chat [data-testid=\"bot\"]').length === 0")
    finally:
        page.close()


@pytest.mark.slow
def test_describe_the_whole_series_and_a_chosen_finding_moves_the_slider_to_its_key_slice(
    study_page, browser, tmp_path
):
    """A phantom volume with known lesions: the page describes every slice, lists one finding per
    lesion, and choosing a finding moves the slider to its key slice, inside the lesion's slice range,
    with the box drawn over the lesion there."""
    from ctscribe.fixtures.phantom_series import build_phantom_series

    truth = json.loads(build_phantom_series(tmp_path / "series").read_text())
    entry = truth["series"]["nifti/volume-2.nii.gz"]
    total, lesions = entry["slices"], entry["lesions"]
    page = _open(browser, study_page)
    try:
        page.locator("#upload input[type=file]").set_input_files(tmp_path / "series/nifti/volume-2.nii.gz")
        page.locator("#image-info").get_by_text(f"of {total}").wait_for()
        window = truth["window"]  # the window the phantom is read in, as `ctscribe study` reads it
        page.get_by_label("Window (DICOM, NIfTI)").fill(window)
        page.get_by_role("option", name=window, exact=True).click()
        page.locator("#image-info").get_by_text(window).wait_for()
        page.locator("#describe-series").click()
        page.locator("#status").get_by_text(f"finding(s) over {total} slices").wait_for()
        options = page.locator("#study-findings label")
        labels = options.all_inner_texts()
        assert len(labels) == len(lesions), labels  # the stand-in reads every lesion, and only those
        for number, lesion in enumerate(lesions):  # both sorted by first slice
            assert f"{lesion['abnormality']}, {lesion['region']}, {lesion['side']}" in labels[number]
        number = len(lesions) // 2  # not the first: the slider must move to this finding's slice
        key = int(re.search(r"key slice (\d+)", labels[number]).group(1))
        first, last = lesions[number]["slices"]
        assert first + 1 <= key <= last + 1, (labels[number], lesions[number])
        options.nth(number).click()
        page.locator("#image-info").get_by_text(f"Slice: {key} of {total}").wait_for()
        assert page.get_by_label("number input for Slice", exact=False).input_value() == str(key)
        deadline = time.monotonic() + 30
        while True:  # the drawn image replaces the plain one
            amber = np.all(
                np.abs(np.asarray(_preview(page, study_page)).astype(int) - BOX_COLOUR) <= 8, axis=2
            )
            if amber.any() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        rows, columns = np.nonzero(amber)
        assert rows.size, "no box drawn on the key slice"
        x0, _, x1, _ = lesions[number]["boxes"][str(key - 1)]
        # The outline's outer edge around the lesion (its number tag sits above or below it).
        assert abs(columns.min() - x0) <= 3 and abs(columns.max() - x1) <= 3, (
            columns.min(),
            columns.max(),
            x0,
            x1,
        )
    finally:
        page.close()
