"""Session-wide fixtures: each expensive artefact is built once per test session and shared."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from ctscribe.fixtures.learning import LEARNING_PIXELS, LEARNING_ROI_SHARE, LEARNING_SPLITS
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from support.servers import free_port, running_server

# The `unavailable` fixture, and the list at the end of the run of tests it skipped for a missing piece.
pytest_plugins = ["support.missing"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny model of the default family (real tokenizer), built once for the whole session."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """``family_model_dir(model_type)``: the tiny random checkpoint of that family, each built once per
    session when first asked for (the default family's is :func:`tiny_model_dir`)."""
    from ctscribe.fixtures.families import QWEN2_VL, build_family_model

    folders = {QWEN2_VL: tiny_model_dir}

    def get(model_type: str) -> Path:
        if model_type not in folders:
            out = tmp_path_factory.mktemp("families") / model_type
            folders[model_type] = build_family_model(out, model_type, "tiny")
        return folders[model_type]

    return get


@pytest.fixture(scope="session")
def family(tiny_model_dir: Path):
    """The tiny model's family, chosen from its config.json as training and inference choose it."""
    from ctscribe.models import family_for

    return family_for(tiny_model_dir)


@pytest.fixture(scope="session")
def processor(tiny_model_dir: Path):
    """The tiny model's processor: the real tokenizer and chat template of its family."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def conversations() -> dict[str, list[dict]]:
    """Record messages as prepare writes them: one turn, an English dialogue, a Chinese dialogue."""
    english = [
        {"role": "user", "content": "<image>Which organ is shown?"},
        {"role": "assistant", "content": "The brain."},
        {"role": "user", "content": "Is there a bleed?"},
        {"role": "assistant", "content": "Yes, on the left."},
    ]
    # What prepare --dialogue and translate write for Chinese: prompts, captions and follow-ups in Chinese.
    chinese = [
        {"role": "user", "content": "<image>请用中文描述这张CT图像，并给出诊断印象。"},
        {
            "role": "assistant",
            "content": "胸部CT扫描。感兴趣区位于图像左侧的肺内，可见约1.2%面积的软组织密度结节。",
        },
        {"role": "user", "content": "病变在右侧吗？"},
        {"role": "assistant", "content": "不是。"},
        {"role": "user", "content": "有异常吗？"},
        {"role": "assistant", "content": "有。"},
    ]
    return {"one_turn": english[:2], "dialogue": english, "chinese": chinese}


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120-row phantom data set in three shards, built once for the whole session."""
    return build_phantom(tmp_path_factory.mktemp("phantom") / "set", rows=120, seed=7, rows_per_shard=50)


@pytest.fixture(scope="session")
def learning_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 phantom rows with short captions, prepared at the tiny-cpu recipe's pixel budget; every
    lesion slice has its green box, so every "A lesion is present" answer is grounded (with the
    phantom's default share, one run's region accuracy fell to 0.73 at 400 steps: see LEARNING_ROI_SHARE)."""
    from ctscribe.ct.images import ImageOptions
    from ctscribe.prepare.run import StageOptions, run_prepare

    root = tmp_path_factory.mktemp("learning")
    build_phantom(root / "phantom", rows=400, seed=1, short_captions=True, roi_share=LEARNING_ROI_SHARE)
    stage = StageOptions(image=ImageOptions(max_pixels=LEARNING_PIXELS))
    run_prepare(str(root / "phantom"), root / "data", stage, LEARNING_SPLITS, workers=2, show_progress=False)
    return root / "data"


@pytest.fixture(scope="session")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 phantom rows prepared with prepare's defaults (262,144-pixel budget): what the shipped
    recipes train on unchanged."""
    from ctscribe.prepare.run import FinalizeOptions, StageOptions, run_prepare

    root = tmp_path_factory.mktemp("default-data")
    build_phantom(root / "phantom", rows=40, seed=3)
    splits = FinalizeOptions(val_fraction=0.1, test_fraction=0.1)
    run_prepare(str(root / "phantom"), root / "data", StageOptions(), splits, workers=1, show_progress=False)
    return root / "data"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, learning_data: Path) -> Path:
    """The tiny model trained once per session with the tiny-cpu recipe; shared by every test that
    needs a model that has learned something."""
    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny-cpu"
    recipe = load_recipe(
        "tiny-cpu",
        dataset_dir=str(learning_data),
        output_dir=str(run_dir),
        model_name_or_path=str(tiny_model_dir),
    )
    train(recipe)
    return run_dir


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory, trained_run: Path, learning_data: Path) -> Path:
    """A LoRA adapter trained a few steps on top of the trained tiny model: the run dir.

    The base is the trained model, not the random one, so greedy generations are decisive (a random
    model's near-tied logits flip under rounding) and export's checks have a real adapter to merge.
    """
    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import train

    run_dir = tmp_path_factory.mktemp("runs") / "lora"
    recipe = load_recipe(
        "tiny-cpu",
        [
            "finetuning_type=lora",
            "lora_rank=16",
            "lora_alpha=32",
            "freeze_vision_tower=true",
            "freeze_multi_modal_projector=true",
            "max_steps=20",
            "save_steps=1000",
            "eval_steps=1000",
        ],
        dataset_dir=str(learning_data),
        output_dir=str(run_dir),
        model_name_or_path=str(trained_run / "model"),
    )
    train(recipe)
    return run_dir


@pytest.fixture(scope="session")
def llamafactory_cli(unavailable) -> Path:
    """LLaMA-Factory's CLI from ``make lf-env`` (.venv-lf); make test builds it."""
    from ctscribe.llamafactory_cli import LlamaFactoryError, find_cli

    try:
        return find_cli()
    except LlamaFactoryError as error:
        unavailable(str(error))


class Server:
    """``ctscribe serve`` in its own process group (:func:`support.servers.running_server`), always
    stopped by the fixture that starts it; ``stop()`` may come earlier, and more than once."""

    def __init__(
        self,
        model: Path,
        log: Path,
        *args: str,
        max_pixels: int | None = LEARNING_PIXELS,
        web: bool = False,
        env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        command = [sys.executable, "-m", "ctscribe", "serve", "--model", str(model), "--port", str(self.port)]
        command += [
            *(["--max-pixels", str(max_pixels)] if max_pixels else []),
            *([] if web else ["--no-web"]),
        ]
        self._stack = ExitStack()
        self.url = self._stack.enter_context(
            running_server([*command, *args], self.port, log, start_s=180, env=env)
        )
        self.log = log

    def stop(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def start_server():
    """``start_server(model, log, *args, max_pixels=..., web=..., env=...)``: a running ``ctscribe
    serve`` (a :class:`Server`; ``max_pixels=None`` leaves the budget to the model; no page unless
    ``web``), stopped at the end of the session at the latest."""
    started: list[Server] = []

    def start(model: Path, log: Path, *args: str, **options) -> Server:
        started.append(Server(model, log, *args, **options))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def real_caption() -> str:
    """The real MedTrinity-25M CT caption quoted in shared/notes/facts.md (tests/clinical checks it)."""
    return (
        "The image is a non-contrast computed tomography (CT) scan of the brain, showing the cerebral "
        "hemispheres, ventricles, and subarachnoid spaces without any medical devices visible. The region "
        "of interest, located centrally and in the middle of the image, exhibits an area of increased "
        "density compared to the surrounding brain tissue, which is indicative of an intracranial "
        "hemorrhage. This abnormality is likely affecting the surrounding brain structures due to mass "
        "effect or increased intracranial pressure, which can lead to a shift of brain tissue and "
        "potential further complications."
    )
