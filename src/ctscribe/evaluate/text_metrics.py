"""N-gram text metrics between generated and reference descriptions: BLEU-4, ROUGE-L, CIDEr, METEOR.

Scale: BLEU-4, ROUGE-L and METEOR are reported on 0..1 (sacrebleu's 0..100 is divided by 100).
CIDEr keeps pycocoevalcap's own scale (0..10 per sample; an identical caption scores 10 against one
reference), the scale of published numbers, which print it multiplied by 100
(MIMIC-CXR "CIDEr 109.4" is 1.094 here).

Each sample has one reference (MedTrinity has one caption per image). Its language is the
reference's (:func:`is_chinese`): the reference defines what the text should be, and a prediction in
the other language is tokenised the same way and simply scores low.

- **BLEU-4** (sacrebleu): tokeniser ``13a`` for English, ``zh`` for Chinese (one token per Chinese
  character, ``13a`` for the rest), case-sensitive, sacrebleu's default ``exp`` smoothing. The corpus
  score is corpus BLEU: n-gram matches and lengths summed over the corpus, then precisions and
  brevity penalty; it is *not* the mean of sentence BLEU. Per-sample values are sentence BLEU
  (sacrebleu's ``sentence_bleu`` settings: ``exp`` smoothing, effective order) for reading examples;
  the bootstrap resamples the per-sample sufficient statistics in ``stats`` and recomputes corpus
  BLEU on each resample (:func:`bleu_from_stats`).
- **ROUGE-L** (rouge-score ``RougeScorer(["rougeL"])``): F1 of the longest common subsequence per
  sample, averaged over samples (as captioning toolkits do). English uses rouge-score's default
  tokeniser (lower-case, runs of ``[a-z0-9]``, no stemming). That tokeniser deletes every non-ASCII
  character, so a Chinese caption would be empty: Chinese uses :class:`CharTokenizer` (one token per
  Chinese character, lower-cased ASCII words kept whole, punctuation dropped).
- **CIDEr** (pycocoevalcap ``Cider``, i.e. CIDEr-D: tf-idf weighted 1- to 4-gram cosine similarity
  with clipping and a length penalty, times 10). English input is tokenised the way coco-caption
  does before CIDEr, with pycocoevalcap's ``PTBTokenizer`` (the Stanford PTB tokeniser in Java,
  lower-cased, punctuation tokens removed: :func:`ptb_tokenize`, one JVM start for every text of an
  evaluation), which is what makes the number comparable with published CIDEr. Without Java, and
  for Chinese (no published Chinese CIDEr to compare with), :func:`tokenize` stands in (lower-case
  words, Chinese characters one by one, punctuation dropped): those numbers are *not* comparable
  with published ones; metrics.json's ``cider_tokenizer`` says which ran (``ptb`` or ``ctscribe``).
  Its IDF is computed from the references *of the corpus being scored*: an n-gram
  found in every reference gets weight 0, and with one sample every weight is 0. The numbers are
  therefore unstable on small corpora (use hundreds of samples; fewer than 2 gives NaN) and not
  comparable across test sets; on MedTrinity's templated captions the template's n-grams weigh
  little and the varying words (organ, side, finding) carry the score. Per-sample values use the
  whole corpus's IDF; the bootstrap resamples them with that IDF held fixed.
- **METEOR** (pycocoevalcap ``Meteor``, Meteor 1.5 ``-l en -norm``): needs Java; ``None`` when no
  ``java`` is on the PATH. English only (its stemmer, synonyms and paraphrases are English): Chinese
  samples get NaN and are left out. The corpus score is the jar's own aggregate over the scored
  samples; the bootstrap resamples the per-sample segment scores (their mean differs slightly). The
  JVM takes 10-20 s to start.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from rouge_score import tokenizers as rouge_tokenizers

from ctscribe.evaluate.bootstrap import Columns
from ctscribe.text import CJK_RANGES, is_chinese

log = logging.getLogger(__name__)

_TOKEN = re.compile(rf"[{CJK_RANGES}]|[a-z0-9]+(?:[.'\-][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers ("4.1", "t2-weighted") and single Chinese characters; no
    punctuation. Used for CIDEr in both languages and, through :class:`CharTokenizer`, ROUGE-L in
    Chinese."""
    return _TOKEN.findall(text.lower())


class CharTokenizer(rouge_tokenizers.Tokenizer):
    """rouge-score tokeniser for Chinese: one token per Chinese character (see :func:`tokenize`)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


@dataclass(frozen=True, eq=False)
class MetricResult:
    """A metric on a corpus: ``score`` (corpus level), ``per_sample`` values, and for corpus-level
    metrics that are not a mean (BLEU) the per-sample sufficient statistics ``stats`` the bootstrap
    resamples."""

    name: str
    score: float
    per_sample: np.ndarray
    stats: np.ndarray | None = field(default=None, repr=False)

    def columns(self) -> Columns:
        """What the bootstrap and the paired tests resample: BLEU's statistics, else the per-sample
        values (a mean)."""
        if self.stats is not None:
            return Columns.of(self.stats, bleu_from_stats)
        return Columns.of(self.per_sample)

    def ci(self, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
        """Percentile bootstrap interval for ``score`` (see :mod:`ctscribe.evaluate.bootstrap`)."""
        return self.columns().ci(n_resamples=n_resamples, seed=seed, alpha=alpha)


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


# ---------------------------------------------------------------------------------------------
# BLEU-4

# Columns of a BLEU statistics row, as sacrebleu computes them per segment.
BLEU_STATS = (
    "sys_len",
    "ref_len",
    *(f"correct{n}" for n in range(1, 5)),
    *(f"total{n}" for n in range(1, 5)),
)


def bleu_from_stats(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 (0..1) from summed statistics (columns :data:`BLEU_STATS`), vectorised over rows.

    Reproduces sacrebleu's ``BLEU.compute_bleu`` with ``exp`` smoothing (its corpus default): brevity
    penalty ``exp(1 - ref_len / sys_len)`` when the system is shorter; an order with no match gets
    precision ``1 / (2^k * total)`` for its k-th such order; no match at all, or an order with no
    n-grams, gives 0.
    """
    t = np.atleast_2d(np.asarray(totals, dtype=float))
    sys_len, ref_len = t[:, 0], t[:, 1]
    correct, total = t[:, 2:6], t[:, 6:10]
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(sys_len >= ref_len, 1.0, np.exp(1.0 - ref_len / np.where(sys_len > 0, sys_len, 1.0)))
        bp = np.where(sys_len > 0, bp, 0.0)
        zero = correct == 0
        smooth = 2.0 ** np.cumsum(zero, axis=1)
        safe_total = np.where(total > 0, total, 1.0)
        precision = np.where(zero, 1.0 / (smooth * safe_total), correct / safe_total)
        score = bp * np.exp(np.log(precision).mean(axis=1))
    undefined = (total == 0).any(axis=1) | (correct.sum(axis=1) == 0)
    return np.where(undefined, 0.0, score)


def bleu4(predictions: Sequence[str], references: Sequence[str]) -> MetricResult:
    """BLEU-4 on 0..1: corpus BLEU as ``score``, sentence BLEU as ``per_sample``, statistics in
    ``stats`` (one row per sample, columns :data:`BLEU_STATS`)."""
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    scorers = {lang: BLEU(tokenize=lang, effective_order=True) for lang in ("13a", "zh")}
    stats = np.zeros((len(predictions), len(BLEU_STATS)))
    per_sample = np.zeros(len(predictions))
    for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        scorer = scorers["zh" if is_chinese(reference) else "13a"]
        result = scorer.sentence_score(prediction, [reference])
        stats[i] = [result.sys_len, result.ref_len, *result.counts, *result.totals]
        per_sample[i] = result.score / 100
    score = float(bleu_from_stats(stats.sum(axis=0))[0]) if len(predictions) else float("nan")
    return MetricResult("bleu4", score, per_sample, stats)


# ---------------------------------------------------------------------------------------------
# ROUGE-L


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> MetricResult:
    """ROUGE-L F1 on 0..1 per sample, and their mean."""
    from rouge_score.rouge_scorer import RougeScorer

    _check(predictions, references)
    english = RougeScorer(["rougeL"], use_stemmer=False)
    chinese = RougeScorer(["rougeL"], tokenizer=CharTokenizer())
    per_sample = np.array(
        [
            (chinese if is_chinese(reference) else english).score(reference, prediction)["rougeL"].fmeasure
            for prediction, reference in zip(predictions, references, strict=True)
        ],
        dtype=float,
    )
    score = float(per_sample.mean()) if len(per_sample) else float("nan")
    return MetricResult("rouge_l", score, per_sample)


# ---------------------------------------------------------------------------------------------
# CIDEr


def ptb_tokenize(texts: Iterable[str]) -> dict[str, str] | None:
    """Each distinct text's coco-caption tokens (pycocoevalcap ``PTBTokenizer``), from one JVM start;
    ``None`` without Java (or when the tokeniser cannot run), so CIDEr falls back to :func:`tokenize`."""
    unique = list(dict.fromkeys(texts))
    if shutil.which("java") is None:
        return None
    if not unique:
        return {}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The jar reads one text per line and splits lines at Unicode separators too (U+2028, U+0085):
    # whitespace is collapsed first, which changes no token, so texts and lines stay aligned.
    lines = {i: [{"caption": " ".join(text.split())}] for i, text in enumerate(unique)}
    try:
        tokens = PTBTokenizer().tokenize(lines)
    except OSError as error:  # it writes its input beside the jar: a read-only install fails here
        log.warning("PTB tokeniser failed (%s); CIDEr uses ctscribe's tokeniser", error)
        return None
    if len(tokens) != len(unique):
        raise RuntimeError(f"PTB tokeniser returned {len(tokens)} lines for {len(unique)} texts")
    return {text: tokens[i][0] for i, text in enumerate(unique)}


def cider(
    predictions: Sequence[str], references: Sequence[str], ptb: Mapping[str, str] | None = None
) -> MetricResult:
    """CIDEr-D on pycocoevalcap's scale (0..10 per sample), and its corpus mean; NaN for fewer than
    2 samples, where its IDF is degenerate (every weight 0). ``ptb``: :func:`ptb_tokenize`'s tokens of
    every text, used for English samples (the comparable tokenisation); without it, :func:`tokenize`."""
    from pycocoevalcap.cider.cider import Cider

    _check(predictions, references)
    n = len(predictions)
    if n < 2:
        return MetricResult("cider", float("nan"), np.full(n, np.nan))

    def tokens(text: str, reference: str) -> str:
        return ptb[text] if ptb is not None and not is_chinese(reference) else " ".join(tokenize(text))

    refs = {i: [tokens(r, r)] for i, r in enumerate(references)}
    preds = {i: [tokens(p, r)] for i, (p, r) in enumerate(zip(predictions, references, strict=True))}
    if not any(r[0] for r in refs.values()):  # no reference n-gram at all: nothing to match
        return MetricResult("cider", 0.0, np.zeros(n))
    _, scores = Cider().compute_score(refs, preds)
    per_sample = np.asarray(scores, dtype=float)
    return MetricResult("cider", float(per_sample.mean()), per_sample)


# ---------------------------------------------------------------------------------------------
# METEOR


def meteor(predictions: Sequence[str], references: Sequence[str]) -> MetricResult | None:
    """METEOR 1.5 on 0..1 for English samples (NaN per Chinese sample); ``None`` without Java or when
    no sample is English."""
    _check(predictions, references)
    if shutil.which("java") is None:
        return None
    english = [i for i, r in enumerate(references) if not is_chinese(r)]
    if not english:
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    def clean(text: str) -> str:  # the jar reads one line per segment, fields split by "|||"
        return " ".join(text.replace("|||", " ").split())

    refs = {i: [clean(references[i])] for i in english}
    preds = {i: [clean(predictions[i])] for i in english}
    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(refs, preds)
    finally:
        del scorer  # its __del__ stops the JVM
    per_sample = np.full(len(predictions), np.nan)
    per_sample[english] = scores
    return MetricResult("meteor", float(score), per_sample)


def text_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    with_meteor: bool = False,
    ptb: Mapping[str, str] | None = None,
) -> dict[str, MetricResult]:
    """BLEU-4, ROUGE-L and CIDEr (on ``ptb`` tokens where given, see :func:`cider`), and METEOR when
    asked and Java is present, keyed by name."""
    results = {
        "bleu4": bleu4(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "cider": cider(predictions, references, ptb),
    }
    if with_meteor:
        result = meteor(predictions, references)
        if result is not None:
            results["meteor"] = result
    return results
