"""The one generation engine: chat requests with CT images in, descriptions out, in batches.

``predict``, ``evaluate`` and ``serve`` all generate through :class:`TransformersEngine` (or another
:class:`GenerationBackend`, the one ``--backend`` picks: :mod:`ctscribe.generate.backends`), so a
description produced by the API, a batch job and an evaluation report come from the same prompt
rendering, image path and decoding settings.

Batching uses left padding: every prompt then ends at the same position, so one ``generate`` call
extends all of them. The model's rotary positions are computed from the attention mask, so a padded
prompt gets the same positions, and in fp32 the same greedy tokens, as the prompt alone (a test and
the serve concurrency test check this).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from ctscribe.ct.images import ImageOptions, PreparedImage, prepare_image
from ctscribe.generate.decoding import decode_keeping_grounding, hidden_special_ids
from ctscribe.generate.family_boxes import to_family, to_grid
from ctscribe.generate.options import DEFAULT_MAX_NEW_TOKENS
from ctscribe.model_settings import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    resolve_adapter,
    set_processor_budget,
)
from ctscribe.models import family_for
from ctscribe.models.family import ImageGrid


@dataclass(frozen=True)
class GenerationRequest:
    """One conversation to continue.

    ``messages`` are chat messages whose ``content`` is a string or a list of parts
    ``{"type": "text", "text": ...}`` / ``{"type": "image"}``; ``images`` holds one PIL image per
    image part, in order, already through :func:`ctscribe.ct.images.prepare_image` (an engine's
    ``prepare(raw).image`` for raw images).
    """

    messages: list[dict]
    images: list[Image.Image] = field(default_factory=list)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    # No end of turn before this many tokens (vLLM's min_tokens; max_new_tokens is its ignore_eos).
    min_new_tokens: int = 0
    temperature: float = 0.0  # 0 is greedy: reproducible, what evaluation and tests need
    top_p: float = 1.0
    seed: int | None = None  # for sampling; greedy ignores it
    # Called with each new piece of text as it is generated (serve's streaming); the pieces add up to
    # a prefix of the final text, which the result then holds whole. Runs on the generating thread.
    on_text: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens), as OpenAI names them
    seconds: float  # wall time of the batch this request ran in


class GenerationBackend(Protocol):
    """What predict, evaluate and serve need from a generation backend (``--backend``)."""

    name: str  # the model's name, written next to every output
    image_options: ImageOptions
    grid: ImageGrid  # the model family's image grid, which sizes every image

    def prepare(self, image: Image.Image | bytes | str | Path) -> PreparedImage: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


class ImagePathMixin:
    """Gives a backend :meth:`prepare`: images through the one image path, at its own pixel budget
    and its model's image grid."""

    image_options: ImageOptions
    grid: ImageGrid

    def prepare(self, image: Image.Image | bytes | str | Path) -> PreparedImage:
        """Any image through the one image path, at this engine's pixel budget: the model's image
        (``.image``) with the crop it was cut from, so that boxes map back to the image given."""
        return prepare_image(image, self.image_options, grid=self.grid)


def engine_name(model: str | Path, adapter_dir: Path | None) -> str:
    """The name written next to outputs: the model as given, plus the adapter when one is applied."""
    return str(model) + (f"+{adapter_dir}" if adapter_dir else "")


def check_model_reference(model: str | Path) -> None:
    """Fail with a clear message on a local model path that does not exist.

    Otherwise transformers would take it for a Hub id and fail deep inside with a message about repo
    names. A Hub id is ``name`` or ``namespace/name``; anything else is meant as a folder.
    """
    text = str(model)
    if Path(text).exists():
        return
    if isinstance(model, Path) or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise FileNotFoundError(f"no model folder at {text}")


def _sampling_key(request: GenerationRequest) -> tuple:
    """Requests with equal keys can share one ``generate`` call (``min_new_tokens`` is one setting for
    the whole call in transformers)."""
    if request.temperature <= 0:
        return ("greedy", request.min_new_tokens)
    return ("sample", request.min_new_tokens, request.temperature, request.top_p, request.seed)


class _TextStreamer:
    """Feeds each request's ``on_text`` while a batch generates (transformers' streamer protocol).

    ``generate`` calls :meth:`put` once with the prompts, then once per step with one new token per
    row. Each row's text is decoded whole and only its new suffix is sent, held back while it ends in
    an incomplete UTF-8 character, so the pieces always add up to a prefix of the final text.
    """

    def __init__(
        self, decode: Callable[[list[int]], str], requests: Sequence[GenerationRequest], stop_ids: set[int]
    ):
        self.decode, self.requests, self.stop_ids = decode, requests, stop_ids
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent = [""] * len(requests)
        self.finished = [r.on_text is None for r in requests]
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            request = self.requests[row]
            if self.finished[row] or token in self.stop_ids:
                self.finished[row] = True
                continue
            self.tokens[row].append(token)
            self.finished[row] = len(self.tokens[row]) >= request.max_new_tokens
            text = self.decode(self.tokens[row])
            if text.endswith("\ufffd") or len(text) <= len(self.sent[row]):
                continue
            request.on_text(text[len(self.sent[row]) :])
            self.sent[row] = text

    def end(self) -> None:
        """Nothing to flush: the caller sends whatever the final text adds to what was streamed."""


class TransformersEngine(ImagePathMixin):
    """A vision-language model of a supported family (optionally with a PEFT adapter) on transformers,
    batched with left padding."""

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        name: str | None = None,
        processor: str | Path | None = None,
    ) -> None:
        """``processor`` is for a full fine-tuning checkpoint, which holds weights but no processor."""
        import torch
        from transformers import AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":  # bf16 where the GPU has it; fp32 on CPU, where bf16 is slow and inexact
            cuda_bf16 = self.device.startswith("cuda") and torch.cuda.is_bf16_supported()
            torch_dtype = torch.bfloat16 if cuda_bf16 else torch.float32
        else:
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        check_model_reference(model)
        family = family_for(model)  # an unsupported checkpoint is refused before anything loads
        adapter_dir = resolve_adapter(adapter) if adapter is not None else None
        self.processor = AutoProcessor.from_pretrained(str(processor or model))
        self.processor.tokenizer.padding_side = "left"
        # Images arrive fitted to this budget; the processor must not resize them to its folder's.
        set_processor_budget(self.processor, max_pixels, min_pixels)
        loaded = family.model_class().from_pretrained(str(model), dtype=torch_dtype)
        if adapter_dir is not None:
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, str(adapter_dir))
        self._attach(
            loaded.to(self.device).eval(), max_pixels, min_pixels, name or engine_name(model, adapter_dir)
        )

    @classmethod
    def from_loaded(
        cls, model, processor, *, max_pixels: int, min_pixels: int, name: str
    ) -> TransformersEngine:
        """An engine over a model already in memory (a training run's, between steps) and a copy of
        its processor: the same prompts, batching and decoding as every other use of the engine. The
        caller puts the model in eval mode for the call and back after."""
        engine = cls.__new__(cls)
        engine.device = str(next(model.parameters()).device)
        engine.processor = copy.deepcopy(processor)  # left padding here must not reach the trainer's
        engine.processor.tokenizer.padding_side = "left"
        set_processor_budget(engine.processor, max_pixels, min_pixels)
        engine._attach(model, max_pixels, min_pixels, name)
        return engine

    def _attach(self, model, max_pixels: int, min_pixels: int, name: str) -> None:
        self.model = model
        self.generation_config = copy.deepcopy(model.generation_config)
        self.image_options = ImageOptions(max_pixels=max_pixels, min_pixels=min_pixels)
        family = family_for(model.config)
        self.grid, self.grounding = family.grid, family.grounding
        self.name = name
        self.batches: list[int] = []  # sizes of the generate calls made, for stats and tests
        self.hidden_ids = hidden_special_ids(self.processor.tokenizer)

    def _decode(self, tokens: list[int]) -> str:
        return decode_keeping_grounding(self.processor.tokenizer, tokens, self.hidden_ids)

    def _config(self, request: GenerationRequest, max_new_tokens: int):
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = max_new_tokens
        config.min_new_tokens = request.min_new_tokens or None  # the end-of-turn token masked until then
        config.use_cache = True  # a training run may have saved use_cache=False into the config
        config.do_sample = request.temperature > 0
        if config.do_sample:
            config.temperature, config.top_p, config.top_k = request.temperature, request.top_p, 0
        else:
            # transformers' neutral values: greedy ignores them, and the checkpoint's own sampling
            # settings (the default family's ship temperature 0.01, top_k 1) would each print a warning.
            config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50
        # A checkpoint's repetition penalty (one family's ships 1.05) is off as in every other backend:
        # vLLM's sampling parameters leave it at 1.0 and the API refuses it (openai_protocol).
        config.repetition_penalty = 1.0
        return config

    def _run(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        start = time.perf_counter()
        prompts = [
            self.processor.apply_chat_template(r.messages, add_generation_prompt=True) for r in requests
        ]
        images = [image for r in requests for image in r.images]
        inputs = self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt").to(
            self.device
        )
        max_new_tokens = max(r.max_new_tokens for r in requests)
        if requests[0].seed is not None:
            torch.manual_seed(requests[0].seed)
        stop_ids = set(_as_list(self.generation_config.eos_token_id))
        streamer = None
        if any(r.on_text is not None for r in requests):
            streamer = _TextStreamer(self._decode, requests, stop_ids)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, generation_config=self._config(requests[0], max_new_tokens), streamer=streamer
            )
        self.batches.append(len(requests))
        seconds = time.perf_counter() - start
        prompt_length = inputs["input_ids"].shape[1]
        results = []
        for row, request in enumerate(requests):
            tokens = output[row, prompt_length:].tolist()[: request.max_new_tokens]
            end = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
            finish = "stop" if end is not None else "length"
            tokens = tokens if end is None else tokens[:end]
            results.append(
                GenerationResult(
                    text=self._decode(tokens),
                    prompt_tokens=int(inputs["attention_mask"][row].sum()),
                    completion_tokens=len(tokens),
                    finish_reason=finish,
                    seconds=seconds,
                )
            )
        return results

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for every request; requests with the same sampling settings share one batch."""
        asked, requests = requests, to_family(requests, self.grounding)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(_sampling_key(request), []).append(index)
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in groups.values():
            for index, result in zip(indices, self._run([requests[i] for i in indices]), strict=True):
                results[index] = result
        return to_grid(results, asked, self.grounding)  # type: ignore[arg-type]


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
