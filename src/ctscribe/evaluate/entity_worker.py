"""RaTEScore and RadGraph-F1 per sample, run inside the metrics environment (``.venv-metrics``).

The two packages (``ratescore`` 0.6.0, ``radgraph`` 0.1.18) pin what ctscribe's environment cannot
hold: RaTEScore's sentence splitter needs spaCy 3.7 (numpy < 2), and radgraph's bundled AllenNLP
calls tokenizer methods that transformers 5 removed. So they live in their own environment, built
from requirements-metrics.lock by ``make metrics-env``, and ctscribe runs this file there as a
program (:mod:`ctscribe.evaluate.entity_metrics`), by path: it imports nothing of ctscribe::

    .venv-metrics/bin/python entity_worker.py REQUEST.json RESULT.json

REQUEST: ``{"metrics": [...], "models": {...}, "predictions": [...], "references": [...],
"device": "cpu" | "cuda" | "auto"}``; with no texts the models are only loaded. RESULT: per metric, the
per-sample scores, the models used and whether any is a stand-in (a model folder whose config.json
says ``"ctscribe_stand_in": true``: random weights that check the wiring and give no score). A
model that cannot be loaded (offline, a wrong id) ends the program with exit code
:data:`LOAD_FAILED` and one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

LOAD_FAILED = 3
STAND_IN_KEY = "ctscribe_stand_in"
# RaTEScore's value for a pair where either side has no entity (its scorer's own rule), which is also
# what a text without a sentence gets: the package drops such texts instead of scoring them.
NO_ENTITY_SCORE = 0.5
# radgraph 0.1.18 finds a model as MODEL_CACHE_DIR/<model type>/; a folder given by the user is linked
# under that name.
RADGRAPH_TYPE = "radgraph-xl"


class LoadError(Exception):
    """A metric's model could not be loaded; the message is the one line the user sees."""


def _quiet() -> None:
    """RaTEScore's sentence splitter (PyRuSH) logs every token at DEBUG through loguru."""
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()


def _is_stand_in(model: str) -> bool:
    config = Path(model) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get(STAND_IN_KEY))


def _load(metric: str, models: list[str], build):
    try:
        return build()
    except Exception as error:  # any failure to fetch or read a model is the same to the user
        first = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        offline = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise LoadError(
            f"{metric}: cannot load {', '.join(models)}{offline}: {first[:300]}. The models come from the "
            "Hugging Face Hub on first use; run once online, or give local folders with --metric-model"
        ) from None


def ratescore(predictions: list[str], references: list[str], models: dict, device: str) -> dict:
    """RaTEScore per sample (Zhao et al., EMNLP 2024): entities found by a NER model, matched by a
    synonym encoder's similarity, weighted by entity type, F1 of both directions."""
    from RaTEScore import RaTEScore
    from RaTEScore.utils import sentence_split

    names = [models["ratescore-ner"], models["ratescore-encoder"]]
    scorer = _load(
        "ratescore",
        names,
        lambda: RaTEScore(bert_model=names[0], eval_model=names[1], use_gpu=device == "cuda"),
    )
    pairs = enumerate(zip(predictions, references, strict=True))
    scored = [i for i, pair in pairs if all(sentence_split([text])[0] for text in pair)]
    values = [NO_ENTITY_SCORE] * len(predictions)
    if scored:
        found = scorer.compute_score([predictions[i] for i in scored], [references[i] for i in scored])
        for i, value in zip(scored, found, strict=True):
            values[i] = float(value)
    return {"per_sample": values, "models": names, "stand_in": any(map(_is_stand_in, names))}


def radgraph(predictions: list[str], references: list[str], models: dict, device: str) -> dict:
    """RadGraph-F1 per sample (Delbrouck et al., 2022) at its three reward levels: entities
    (simple), entities with their relations' presence (partial), entities with every relation
    (complete), from the RadGraph-XL model's graphs of prediction and reference."""
    from radgraph import F1RadGraph

    model = models["radgraph"]
    cuda = 0 if device == "cuda" else -1
    with tempfile.TemporaryDirectory(prefix="ctscribe-radgraph-") as cache:
        kwargs = {}
        if model != RADGRAPH_TYPE:  # a local folder: link it where radgraph looks
            os.symlink(Path(model).resolve(), Path(cache) / RADGRAPH_TYPE)
            kwargs["model_cache_dir"] = cache
        scorer = _load(
            "radgraph",
            [model],
            lambda: F1RadGraph(reward_level="all", model_type=RADGRAPH_TYPE, cuda=cuda, **kwargs),
        )
        levels: dict[str, list] = {"simple": [], "partial": [], "complete": []}
        if predictions:  # none: the models were only loaded (EntityMetrics.check)
            _, rewards, _, _ = scorer(refs=list(references), hyps=list(predictions))
            levels = dict(zip(levels, rewards, strict=True))
    return {
        "per_sample": {level: [float(v) for v in values] for level, values in levels.items()},
        "models": [model],
        "stand_in": _is_stand_in(model),
    }


METRICS = {"ratescore": ratescore, "radgraph": radgraph}


def _device(asked: str) -> str:
    if asked != "auto":
        return asked
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    _quiet()
    try:
        texts = request["predictions"], request["references"]
        settings = request["models"], _device(request["device"])
        result = {name: METRICS[name](*texts, *settings) for name in request["metrics"]}
    except LoadError as error:
        print(error, file=sys.stderr)
        return LOAD_FAILED
    Path(argv[2]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
