"""BERTScore (Zhang et al., ICLR 2020) with a BERT-family model from a local folder; never downloads.

Each text is encoded by the model; every token is represented by its hidden state at one layer,
normalised to unit length. Each candidate token is matched to its most similar reference token
(greedy matching on cosine similarity) and vice versa:

    P = mean over candidate tokens of max over reference tokens of cos(c, r)
    R = mean over reference tokens of max over candidate tokens of cos(r, c)
    F1 = 2 P R / (P + R)

``per_sample`` is F1 per sample and ``score`` their mean, so ``MetricResult.ci()`` bootstraps the mean.

This reproduces the reference implementation, bert-score 0.3.13, with its defaults (``idf=False``,
``rescale_with_baseline=False``): the tokeniser's [CLS]/[SEP] (``<s>``/``</s>``) are added and may be
matched, but are not averaged over; texts are stripped and truncated to the tokeniser's maximum length
(512 for BERT); RoBERTa/GPT-2 byte-level tokenisers get ``add_prefix_space=True``; a candidate or
reference with no token scores 0. Differences from the paper and the library:

- **No IDF weighting.** The paper defines importance weighting by IDF computed on the references;
  like the library's default it is off (every token weighs the same).
- **No baseline rescaling.** The paper's rescaled numbers, ``(x - b) / (1 - b)``, use a baseline ``b``
  that the library ships per hub model; a local model has none. Raw scores of unrelated texts are far
  above 0, so read differences between systems scored with the same model and layer.
- **Layer.** The library picks a layer per hub model from its WMT16 tuning (``model2layers``): the
  same values are used here when the folder's name is one of those models (``roberta-large`` layer
  17, ``bert-base-chinese`` 8, ...); any other model gets its **last** layer (the paper found
  intermediate layers usually correlate better with humans, so pass ``layer`` when you know better).
- **Model.** Whatever folder is given (the paper's English default is roberta-large layer 17, and
  bert-base-chinese for Chinese); scores from different models or layers are not comparable.
- **Padding.** The library zeroes padded similarities inside a batch, so a token whose similarities
  are all negative can get 0 instead of its true maximum when batched with a longer text; here the
  padding is excluded, which makes results independent of batching (they can differ from the
  library's in that rare case only).

Why not the library itself: bert-score 0.3.13 (2023, unmaintained) was tried with transformers 5.
It raises ``OverflowError`` for a tokeniser that does not declare a maximum length (it passes
``model_max_length``, 1e30, to the Rust tokeniser), silently ignores ``add_prefix_space=True`` for
RoBERTa in transformers 5 (the first word is encoded differently from published numbers), routes
any path containing "t5" to ``T5EncoderModel`` and any path starting with "scibert" to a download,
crashes on an empty text (``build_inputs_with_special_tokens`` is gone), needs the layer for every
path outside its table, and adds ``requests``. The algorithm is short, so it is implemented here with
``transformers``. tests/evaluate/test_bertscore.py checks it against the library itself on a tiny
BERT (layers 0-2, batches of 2, texts in English and Chinese): F1 equal within 1e-6. For RoBERTa/GPT-2
tokenisers it encodes as the library meant to (``add_prefix_space=True``), which the library under
transformers 5 no longer does, so there no test compares the two.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctscribe.evaluate.text_metrics import MetricResult

log = logging.getLogger(__name__)

# bert-score 0.3.13's ``model2layers`` (MIT licence) for the BERT-family models one might keep locally,
# keyed by the model's name without the organisation ("google-bert/bert-base-uncased" → "bert-base-uncased").
TUNED_LAYERS = {
    "bert-base-uncased": 9,
    "bert-large-uncased": 18,
    "bert-base-multilingual-cased": 9,
    "bert-base-chinese": 8,
    "roberta-base": 10,
    "roberta-large": 17,
    "roberta-large-mnli": 19,
    "distilroberta-base": 5,
    "distilbert-base-uncased": 5,
    "distilbert-base-multilingual-cased": 5,
    "xlm-roberta-base": 9,
    "xlm-roberta-large": 17,
    "scibert_scivocab_uncased": 8,
    "scibert_scivocab_cased": 9,
    "deberta-base": 9,
    "deberta-large": 16,
    "deberta-xlarge-mnli": 40,
    "deberta-v3-base": 9,
    "deberta-v3-large": 12,
    "mdeberta-v3-base": 10,
}

UNKNOWN_WARN_SHARE = 0.05  # warn when more of the tokens than this are the tokeniser's unknown token


def _model_dir(model_path: str | Path) -> Path:
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"BERTScore model folder not found: {path} (give a local folder with config.json, the "
            "weights and the tokeniser files of a BERT-family model; nothing is downloaded)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder")
    return path.resolve()


def _names(path: Path) -> list[str]:
    """Names the folder may carry: its own, and the model of a hub cache (models--org--name/snapshots/x)."""
    names = [path.name]
    names += [part.split("--")[-1] for part in path.parts if part.startswith("models--")]
    return names


def default_layer(model_path: str | Path) -> int:
    """The layer :func:`bertscore` uses without ``layer``: bert-score's tuned layer when the folder is
    named after a model of its table (:data:`TUNED_LAYERS`), else the model's last layer."""
    import json

    path = _model_dir(model_path)
    for name in _names(path):
        if name.lower() in TUNED_LAYERS:
            return TUNED_LAYERS[name.lower()]
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    layers = config.get("num_hidden_layers", config.get("n_layers", config.get("num_layers")))
    if layers is None:
        raise ValueError(f"{path / 'config.json'} states no number of layers; pass layer=")
    return int(layers)


@functools.lru_cache(maxsize=1)
def _load(path: str, device: str):
    """Tokeniser and model (kept for the next call: the model and its baseline are scored in turn)."""
    import torch
    from transformers import AutoModel, AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if isinstance(tokenizer, (RobertaTokenizer, GPT2Tokenizer)):  # as bert-score encodes them
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, add_prefix_space=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return tokenizer, model.to(device).eval()


def _max_length(tokenizer) -> int:
    limit = tokenizer.model_max_length
    return int(limit) if limit and limit < 100_000 else 512  # 1e30 means "not declared"


def greedy_match(candidate, reference, candidate_weight, reference_weight):
    """P, R, F1 of greedy cosine matching, vectorised over a batch (torch tensors).

    ``candidate`` (B, Lc, D) and ``reference`` (B, Lr, D) are token embeddings; a weight of 1 marks a
    token that is averaged over, 0 a token that may be matched but is not averaged over ([CLS], [SEP]),
    and NaN a padding position, which is neither. A side with nothing to average over scores 0.
    """
    import torch

    c = torch.nn.functional.normalize(candidate, dim=-1)
    r = torch.nn.functional.normalize(reference, dim=-1)
    sim = torch.bmm(c, r.transpose(1, 2))  # (B, Lc, Lr)
    c_pad = torch.isnan(candidate_weight)
    r_pad = torch.isnan(reference_weight)
    best_for_c = sim.masked_fill(r_pad[:, None, :], -torch.inf).amax(dim=2)
    best_for_r = sim.masked_fill(c_pad[:, :, None], -torch.inf).amax(dim=1)
    wc = candidate_weight.nan_to_num(0.0)
    wr = reference_weight.nan_to_num(0.0)
    nc, nr = wc.sum(dim=1), wr.sum(dim=1)
    precision = (best_for_c.nan_to_num(0.0, neginf=0.0) * wc).sum(dim=1) / nc.clamp(min=1e-12)
    recall = (best_for_r.nan_to_num(0.0, neginf=0.0) * wr).sum(dim=1) / nr.clamp(min=1e-12)
    empty = (nc == 0) | (nr == 0)
    precision = precision.masked_fill(empty, 0.0)
    recall = recall.masked_fill(empty, 0.0)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)
    return precision, recall, f1


def _embed(texts: list[str], tokenizer, model, layer: int, device: str):
    """Hidden states at ``layer`` (B, L, D) and token weights (1 text token, 0 special, NaN padding)."""
    import torch

    batch = tokenizer(
        [t.strip() for t in texts],
        padding=True,
        truncation=True,
        max_length=_max_length(tokenizer),
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    special = batch.pop("special_tokens_mask").bool()
    inputs = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[layer].float()
    mask = batch["attention_mask"].bool()
    weight = torch.where(special, 0.0, 1.0).masked_fill(~mask, torch.nan)
    text_tokens = mask & ~special
    unknown = 0
    if tokenizer.unk_token_id is not None:
        unknown = int(((batch["input_ids"] == tokenizer.unk_token_id) & text_tokens).sum())
    return hidden, weight.to(hidden.device), unknown, int(text_tokens.sum())


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model_path: str | Path,
    *,
    layer: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> MetricResult:
    """BERTScore F1 per sample (0..1 for practical purposes; cosine can make it slightly negative) and
    its mean, with the BERT-family model in the local folder ``model_path``.

    ``layer``: hidden layer to use, 0 (embeddings) to the number of layers; default
    :func:`default_layer`. ``batch_size``: texts per forward pass. ``device``: default CUDA when
    available, else CPU. Raises FileNotFoundError when the folder is missing.
    """
    import torch

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    path = _model_dir(model_path)
    if layer is None:
        layer = default_layer(path)
    n = len(predictions)
    if n == 0:
        return MetricResult("bertscore", float("nan"), np.zeros(0))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = _load(str(path), device)
    n_layers = model.config.num_hidden_layers
    if not 0 <= layer <= n_layers:
        raise ValueError(f"layer {layer} out of range: {path.name} has layers 0..{n_layers}")

    # Similar lengths together so that batches carry little padding.
    order = sorted(range(n), key=lambda i: len(predictions[i]) + len(references[i]))
    f1 = np.zeros(n)
    unknown = total = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        cand, cand_w, u1, t1 = _embed([predictions[i] for i in idx], tokenizer, model, layer, device)
        ref, ref_w, u2, t2 = _embed([references[i] for i in idx], tokenizer, model, layer, device)
        _, _, batch_f1 = greedy_match(cand, ref, cand_w, ref_w)
        f1[idx] = batch_f1.cpu().numpy()
        unknown += u1 + u2
        total += t1 + t2
    if total and unknown / total > UNKNOWN_WARN_SHARE:
        log.warning(
            "BERTScore: %.0f%% of the tokens are unknown to %s's vocabulary (Chinese text with an "
            "English model?); its scores mean little",
            100 * unknown / total,
            path.name,
        )
    return MetricResult("bertscore", float(f1.mean()), f1)
