"""The settings a trained model carries: its image pixel budget, and the language and prompt it was
trained to answer.

A model describes images well only at the pixel budget it was trained at: a larger budget means
more image tokens than it ever saw (the base checkpoint's own 12,845,056 pixels allow 16,384 per
image), a smaller one less detail. So every folder ctscribe writes a model into (a run's
``adapter/``, a full fine-tuning run's ``model/``, an export) records them, in two places:

1. the processor config (``processor_config.json``, and ``preprocessor_config.json`` for readers
   of the older layout) holds the budget as ``size`` (``shortest_edge``/``longest_edge``) and as
   ``min_pixels``/``max_pixels``, so plain ``AutoProcessor.from_pretrained`` and vLLM use it with no
   ctscribe code;
2. ``ctscribe_settings.json`` beside it holds the budget and what ``predict`` and ``serve`` ask when
   the user gives no prompt: the language of the training data's answers and, per answer language,
   the plain form of its prompt.

Both engines and export write them (:func:`record_settings`); predict, evaluate and serve read them
through one function, :func:`inference_settings`. Torch-free, so the CLI and ``recipe.py`` import it
cheaply.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ctscribe import __version__
from ctscribe.atomic import atomic_write_text
from ctscribe.conversation.prompts import DEFAULT_PROMPTS, description_prompt

log = logging.getLogger(__name__)

# 512 x 512 is the matrix of a standard CT slice. The default family (``ctscribe.models``) spends one
# token per 28 x 28 pixels, so this budget (504 x 504 after rounding to multiples of 28) costs ~324
# image tokens: the slice's fine detail survives at a small fraction of the checkpoint's 16,384-token
# maximum (28 * 28 * 16384 px), leaving room for the caption and a batch of several images per GPU
# step. The default of prepare, of the recipe, and of inference on a model that records no budget of
# its own.
DEFAULT_MAX_PIXELS = 512 * 512
# The default family's own lower bound (its processor's ``min_pixels``): 4 tokens. Smaller images are
# upscaled to it.
DEFAULT_MIN_PIXELS = 56 * 56

SETTINGS_FILE = "ctscribe_settings.json"
# Where transformers 5 keeps the image processor (nested), and where older readers look (flat).
PROCESSOR_FILE = "processor_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class ModelSettings:
    """A model's image budget and default prompts; the defaults are what a model without a record gets."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_pixels: int = DEFAULT_MIN_PIXELS
    language: str = "en"  # the language its answers were trained in (the default of predict --lang)
    prompts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTS))  # answer language ->

    def prompt(self, lang: str) -> str:
        """What to ask for a description in ``lang`` when the user gives no prompt."""
        return self.prompts.get(lang) or DEFAULT_PROMPTS[lang]


def data_settings(data_dir: Path) -> tuple[int | None, str, dict[str, str]]:
    """(pixel budget, answer language, prompts) of a prepared data folder, from its ``stats.json``.

    The budget is None where the folder does not record one (a translated set, data from elsewhere).
    A set with answers in both languages answers in English by default.
    """
    path = Path(data_dir) / "stats.json"
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "en", dict(DEFAULT_PROMPTS)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    options = stats.get("options", {})
    budget = options.get("image", {}).get("max_pixels")
    answers = [lang for lang, count in (stats.get("answers") or {"en": 1}).items() if count]
    prompt_lang = options.get("lang", "en")
    prompts = {
        answer: description_prompt(answer if prompt_lang == "both" else prompt_lang, answer)
        for answer in answers
    }
    language = "en" if "en" in answers or not answers else answers[0]
    return budget, language, prompts or dict(DEFAULT_PROMPTS)


def check_data_budget(max_pixels: int, data_dir: Path) -> None:
    """Refuse a training budget above the one the data was prepared at: the prepared images hold no
    more detail than that, and upscaling them only spends tokens. Runs before any model loads."""
    prepared, _, _ = data_settings(data_dir)
    if prepared is not None and max_pixels > prepared:
        raise ValueError(
            f"image_max_pixels is {max_pixels:,} pixels but {data_dir} was prepared at {prepared:,} pixels; "
            f"set image_max_pixels <= {prepared} or prepare the data again with --max-pixels {max_pixels}"
        )


def training_settings(max_pixels: int, min_pixels: int, data_dir: Path) -> ModelSettings:
    """What a model trained at this budget on this data carries."""
    _, language, prompts = data_settings(data_dir)
    return ModelSettings(max_pixels=max_pixels, min_pixels=min_pixels, language=language, prompts=prompts)


def processor_budget(max_pixels: int, min_pixels: int) -> dict:
    """The budget in both spellings an image processor config may use (transformers 5 reads ``size``,
    older transformers and vLLM ``min_pixels``/``max_pixels``)."""
    return {
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }


def set_processor_budget(processor, max_pixels: int, min_pixels: int) -> None:
    """Make a loaded processor resize to this budget (it would otherwise use whatever its folder says,
    such as the base checkpoint's 12,845,056 pixels)."""
    processor.image_processor.size = processor_budget(max_pixels, min_pixels)["size"]


def _update_json(path: Path, update) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def record_settings(folder: Path, settings: ModelSettings) -> None:
    """Write ``settings`` into a saved model or adapter folder: its processor config and
    ``ctscribe_settings.json``. The folder must already hold the processor (as saved by transformers
    or LLaMA-Factory); the image processor's budget is replaced, everything else kept."""
    folder = Path(folder)
    budget = processor_budget(settings.max_pixels, settings.min_pixels)
    nested, flat = folder / PROCESSOR_FILE, folder / PREPROCESSOR_FILE
    if not nested.is_file() and not flat.is_file():
        raise FileNotFoundError(f"no processor config ({PROCESSOR_FILE} or {PREPROCESSOR_FILE}) in {folder}")
    if nested.is_file():
        _update_json(nested, lambda data: data.setdefault("image_processor", {}).update(budget))
        image_processor = json.loads(nested.read_text(encoding="utf-8"))["image_processor"]
        if not flat.is_file():  # the flat layout too, for readers older than transformers 5
            atomic_write_text(flat, json.dumps(image_processor, indent=2, ensure_ascii=False) + "\n")
    if flat.is_file():
        _update_json(flat, lambda data: data.update(budget))
    record = {**asdict(settings), "written_by": f"ctscribe {__version__}"}
    atomic_write_text(folder / SETTINGS_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def read_settings(folder: str | Path) -> ModelSettings | None:
    """The settings ctscribe recorded in ``folder``, or None (a Hub id, a base checkpoint, an older run).

    Only ctscribe's own record counts: a base checkpoint's processor config names a budget too, but
    not one any model was trained at.
    """
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelSettings(
            max_pixels=int(data["max_pixels"]),
            min_pixels=int(data["min_pixels"]),
            language=str(data["language"]),
            prompts={str(k): str(v) for k, v in data["prompts"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is damaged ({error}); export or train the model again") from None


def resolve_adapter(path: str | Path) -> Path:
    """An adapter folder, given either the folder itself or the run dir that holds ``adapter/``."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    raise FileNotFoundError(f"no PEFT adapter (adapter_config.json) in {path} or {path / 'adapter'}")


def recorded_settings(model: str | Path, adapter: str | Path | None = None) -> ModelSettings | None:
    """What the adapter recorded (it was trained last), else what the model folder recorded, else None."""
    if adapter is not None:
        found = read_settings(resolve_adapter(adapter))
        if found is not None:
            return found
    return read_settings(model) if Path(str(model)).is_dir() else None


def inference_settings(
    model: str | Path,
    adapter: str | Path | None = None,
    max_pixels: int | None = None,
    *,
    remote: bool = False,
) -> ModelSettings:
    """The settings predict, evaluate and serve generate with: the model's record, else the defaults.

    ``max_pixels`` (``--max-pixels``) overrides the recorded budget, with a warning when it differs.
    A ``remote`` model (``--backend openai``) cannot be read: ``max_pixels`` or the default decides,
    and the images are sent already fitted to it.
    """
    recorded = None if remote else recorded_settings(model, adapter)
    settings = recorded or ModelSettings()
    if max_pixels is None:
        if recorded is None:
            where = "the server's model cannot be read" if remote else f"{model} records no budget"
            log.info("pixel budget %d (the default: %s; pass --max-pixels)", settings.max_pixels, where)
        return settings
    if recorded is not None and max_pixels != recorded.max_pixels:
        log.warning(
            "--max-pixels %d differs from the %d pixels the model was trained at; using %d",
            max_pixels,
            recorded.max_pixels,
            max_pixels,
        )
    return replace(settings, max_pixels=max_pixels, min_pixels=min(settings.min_pixels, max_pixels))
