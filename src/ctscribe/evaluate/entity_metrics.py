"""RaTEScore and RadGraph-F1: clinical entity metrics from their published packages, per sample.

Both compare a description with its reference through a model's reading of the text, not through
words: RaTEScore (Zhao et al., EMNLP 2024) finds medical entities (abnormality, disease, anatomy,
and their negations) with a DeBERTa NER model and matches them by a biomedical synonym encoder
(BioLORD); RadGraph-F1 (Delbrouck et al., 2022) builds each text's graph of anatomy and
observation entities and their relations with the RadGraph-XL model and scores their overlap.
Our findings parser (:mod:`ctscribe.clinical.findings`) reads a fixed lexicon of regions and
abnormalities instead; docs/EVALUATION.md compares the three.

The packages pin what ctscribe's environment cannot hold, so they run in ``.venv-metrics`` (``make
metrics-env``) as a program, :mod:`ctscribe.evaluate.entity_worker`, which reads the texts from a
request file and writes per-sample scores. Their models come from the Hugging Face Hub at run time,
or from local folders (``--metric-model``). A model folder marked as a stand-in (random weights built
by the tests) yields a wiring check, never a score: :attr:`EntityScores.stand_in`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctscribe.environments import child_environment, find_program
from ctscribe.evaluate import entity_worker
from ctscribe.evaluate.options import ENTITY_METRICS, ENTITY_MODELS
from ctscribe.evaluate.text_metrics import MetricResult

ENV_DIR = ".venv-metrics"
PYTHON_ENV_VAR = "CTSCRIBE_METRICS_PYTHON"
# What each metric adds to a metrics block: RadGraph-F1 at its three reward levels.
RADGRAPH_LEVELS = ("simple", "partial", "complete")


class EntityMetricsError(ValueError):
    """The metrics environment is missing, or a metric's model could not be loaded (one line)."""


def parse_metrics(text: str) -> tuple[str, ...]:
    """``--metrics``: comma-separated names of :data:`ENTITY_METRICS`, in the order given."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in ENTITY_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}: choose from {', '.join(ENTITY_METRICS)}")
    return names


def parse_models(items: Iterable[str]) -> dict[str, str]:
    """``--metric-model NAME=MODEL`` (a Hub id or a local folder) over :data:`ENTITY_MODELS`."""
    models = dict(ENTITY_MODELS)
    for item in items:
        name, _, model = item.partition("=")
        if name not in ENTITY_MODELS or not model:
            raise ValueError(f"--metric-model takes NAME=MODEL with NAME one of {', '.join(ENTITY_MODELS)}")
        models[name] = model
    return models


def find_python() -> Path:
    """The metrics environment's interpreter: ``$CTSCRIBE_METRICS_PYTHON`` or ``.venv-metrics``."""
    return find_program(
        "python",
        ENV_DIR,
        PYTHON_ENV_VAR,
        None,
        EntityMetricsError,
        "the clinical entity metrics run in their own environment; run `make metrics-env` in the "
        "ctscribe checkout",
        search_path=False,  # another interpreter on the PATH would lack the pinned packages
    )


@dataclass(frozen=True)
class EntityScores:
    """Per-sample results, keyed as in metrics.json (``ratescore``, ``radgraph_partial``...); with
    ``stand_in`` they came from stand-in models and are not scores."""

    results: dict[str, MetricResult]
    models: dict[str, list[str]]
    stand_in: bool


@dataclass(frozen=True)
class EntityMetrics:
    """Which entity metrics to add, with which models (``--metric-model``), on which device
    (``auto``: CUDA where the metrics environment's torch sees a GPU, else the CPU)."""

    names: tuple[str, ...]
    models: Mapping[str, str] = field(default_factory=lambda: dict(ENTITY_MODELS))
    device: str = "auto"

    def check(self) -> None:
        """Load every model once without scoring: before an evaluation generates (which can take
        hours), a missing environment or a model that cannot be fetched fails at once, and a first
        run fetches the models here."""
        self._run([], [])

    def score(self, predictions: Sequence[str], references: Sequence[str]) -> EntityScores:
        """Per-sample scores of the pairs; raises :class:`EntityMetricsError` with the worker's line."""
        return _scores(self._run(predictions, references))

    def _run(self, predictions: Sequence[str], references: Sequence[str]) -> dict:
        python = find_python()
        with tempfile.TemporaryDirectory(prefix="ctscribe-entity-") as folder:
            request, result = Path(folder) / "request.json", Path(folder) / "result.json"
            request.write_text(
                json.dumps(
                    {
                        "metrics": list(self.names),
                        "models": dict(self.models),
                        "predictions": list(predictions),
                        "references": list(references),
                        "device": self.device,
                    }
                ),
                encoding="utf-8",
            )
            done = subprocess.run(
                [str(python), entity_worker.__file__, str(request), str(result)],
                env=child_environment(),
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == entity_worker.LOAD_FAILED:
                raise EntityMetricsError(done.stderr.strip().splitlines()[-1])
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-20:])
                raise RuntimeError(f"the entity metrics failed (exit {done.returncode}):\n{tail}")
            return json.loads(result.read_text(encoding="utf-8"))


def _result(name: str, values: list[float]) -> MetricResult:
    per_sample = np.asarray(values, dtype=float)
    return MetricResult(name, float(per_sample.mean()) if len(per_sample) else float("nan"), per_sample)


def _scores(raw: dict) -> EntityScores:
    results, models = {}, {}
    for name, block in raw.items():
        models[name] = block["models"]
        if name == "radgraph":
            for level in RADGRAPH_LEVELS:
                results[f"radgraph_{level}"] = _result(f"radgraph_{level}", block["per_sample"][level])
        else:
            results[name] = _result(name, block["per_sample"])
    return EntityScores(results, models, any(block["stand_in"] for block in raw.values()))
