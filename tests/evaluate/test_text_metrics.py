"""BLEU-4, ROUGE-L, CIDEr and METEOR on cases small enough to compute by hand."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import sacrebleu

from ctscribe.evaluate import text_metrics
from ctscribe.evaluate.text_metrics import (
    bleu4,
    bleu_from_stats,
    cider,
    is_chinese,
    meteor,
    ptb_tokenize,
    rouge_l,
    tokenize,
)
from ctscribe.evaluate.text_metrics import (
    text_metrics as all_metrics,
)

REF = "a small nodule is seen in the left lung"


def test_is_chinese_and_tokenize() -> None:
    assert is_chinese("这是一张颅脑CT图像，显示颅内出血。")
    assert is_chinese("右肺结节")
    assert not is_chinese("The image is a CT scan of the brain (颅脑).")
    assert not is_chinese("")
    assert tokenize("The T2-weighted scan, 4.1% of the area.") == [
        "the",
        "t2-weighted",
        "scan",
        "4.1",
        "of",
        "the",
        "area",
    ]
    assert tokenize("颅脑CT：出血") == ["颅", "脑", "ct", "出", "血"]


def test_identical_text_scores_one() -> None:
    text = "The image is a CT scan of the brain, showing an intracranial hemorrhage."
    assert bleu4([text], [text]).score == pytest.approx(1.0)
    assert rouge_l([text], [text]).score == pytest.approx(1.0)
    assert bleu4(["左肺可见结节"], ["左肺可见结节"]).score == pytest.approx(1.0)
    assert rouge_l(["左肺可见结节"], ["左肺可见结节"]).score == pytest.approx(1.0)


def test_bleu_by_hand() -> None:
    # hyp "a small nodule is seen in the right lung" vs REF (9 tokens each, so no brevity penalty):
    #   1-grams 8/9 (right), 2-grams 6/8 (the right, right lung), 3-grams 5/7, 4-grams 4/6
    #   BLEU = (8/9 * 6/8 * 5/7 * 4/6) ** (1/4) = (960/3024) ** 0.25 = 0.7506
    hyp_a = "a small nodule is seen in the right lung"
    result = bleu4([hyp_a], [REF])
    assert result.score == pytest.approx((960 / 3024) ** 0.25)
    np.testing.assert_array_equal(result.stats[0], [9, 9, 8, 6, 5, 4, 9, 8, 7, 6])
    # hyp "a small nodule is seen" (5 tokens): every n-gram matches (5/5, 4/4, 3/3, 2/2), but it is
    # shorter than the 9-token reference: BP = exp(1 - 9/5) = 0.4493.
    hyp_b = "a small nodule is seen"
    assert bleu4([hyp_b], [REF]).score == pytest.approx(math.exp(1 - 9 / 5))
    # Corpus BLEU pools the counts: matches 13/14, 10/12, 8/10, 6/8; lengths 14 vs 18.
    corpus = bleu4([hyp_a, hyp_b], [REF, REF])
    expected = math.exp(1 - 18 / 14) * (13 / 14 * 10 / 12 * 8 / 10 * 6 / 8) ** 0.25
    assert corpus.score == pytest.approx(expected)
    assert corpus.score != pytest.approx(corpus.per_sample.mean())  # not the mean of sentence BLEU
    assert corpus.score == pytest.approx(sacrebleu.corpus_bleu([hyp_a, hyp_b], [[REF, REF]]).score / 100)


def test_bleu_chinese_by_hand() -> None:
    # Characters: 右肺可见结节 vs 左肺可见结节: 1-grams 5/6, 2-grams 4/5, 3-grams 3/4, 4-grams 2/3.
    result = bleu4(["右肺可见结节"], ["左肺可见结节"])
    assert result.score == pytest.approx((5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25)


@pytest.mark.parametrize(
    ("hyps", "refs"),
    [
        (["a b c d"], ["a x c y"]),  # no 2-, 3- or 4-gram match: exp smoothing
        (["the cat", "a dog runs fast today"], ["the cat sat", "a dog runs"]),
        (["x y z"], ["a b c d e"]),  # nothing matches
        (["The lesion is seen.", "No haemorrhage is seen in the brain."], ["A lesion.", "No haemorrhage."]),
    ],
)
def test_bleu_from_stats_reproduces_sacrebleu(hyps: list[str], refs: list[str]) -> None:
    result = bleu4(hyps, refs)
    assert result.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score / 100)
    assert bleu_from_stats(result.stats.sum(axis=0))[0] == pytest.approx(result.score)


def test_rouge_l_by_hand() -> None:
    # LCS of "a nodule is seen in the lung" and REF: a nodule is seen in the lung = 7 tokens.
    # P = 7/7, R = 7/9, F1 = 2PR/(P+R) = 14/16 = 0.875.
    assert rouge_l(["a nodule is seen in the lung"], [REF]).score == pytest.approx(0.875)
    # Chinese by character: 右肺结节 vs 左肺结节, LCS 3 of 4 each way: F1 0.75. rouge-score's default
    # tokeniser would drop every character and score 0.
    assert rouge_l(["右肺结节"], ["左肺结节"]).score == pytest.approx(0.75)
    both = rouge_l(["a nodule is seen in the lung", "右肺结节"], [REF, "左肺结节"])
    np.testing.assert_allclose(both.per_sample, [0.875, 0.75])
    assert both.score == pytest.approx((0.875 + 0.75) / 2)


CIDER_REFS = [
    "a small nodule is seen in the left lung",
    "an intracranial haemorrhage is seen in the right hemisphere",
    "a hypodense lesion is present in the liver",
    "no focal abnormality is seen in the abdomen",
]


def test_cider_sanity() -> None:
    preds = [
        CIDER_REFS[0],  # identical
        "an intracranial haemorrhage in the brain",  # partial
        "bilateral pleural effusions",  # disjoint
        "no abnormality is seen",
    ]
    result = cider(preds, CIDER_REFS)
    identical, partial, disjoint, _ = result.per_sample
    assert identical == pytest.approx(10.0)  # cosine 1 at every n, no length penalty, x10
    assert identical > partial > disjoint
    assert disjoint == 0.0
    assert result.score == pytest.approx(result.per_sample.mean())
    # Chinese is scored by character.
    zh = cider(["左肺可见结节", "肝脏低密度病灶"], ["左肺可见结节", "颅内出血"])
    assert zh.per_sample[0] == pytest.approx(10.0) and zh.per_sample[1] == 0.0


def test_cider_needs_a_corpus() -> None:
    # With one sample every IDF weight is log(1) - log(1) = 0: CIDEr is undefined, reported as NaN.
    assert math.isnan(cider([REF], [REF]).score)
    assert cider(["", ""], ["", ""]).score == 0.0


def test_intervals_and_errors() -> None:
    rng = np.random.default_rng(0)
    words = ["a", "small", "large", "nodule", "mass", "lesion", "is", "seen", "in", "the", "left", "lung"]
    refs = [" ".join(rng.choice(words, 9)) for _ in range(60)]
    preds = [" ".join(r.split()[:6] + list(rng.choice(words, 2))) for r in refs]
    for result in all_metrics(preds, refs).values():
        low, high = result.ci(n_resamples=200, seed=3)
        assert low <= result.score <= high, result.name
        assert (low, high) == result.ci(n_resamples=200, seed=3)
    with pytest.raises(ValueError):
        bleu4(["a"], [])
    assert math.isnan(bleu4([], []).score) and math.isnan(rouge_l([], []).score)


@pytest.fixture
def java(unavailable) -> None:
    """pycocoevalcap's PTB tokenizer and METEOR run on Java (CI's machines have it)."""
    if shutil.which("java") is None:
        unavailable("no java: pycocoevalcap's PTB tokenizer and METEOR need a JRE (default-jre-headless)")


# Punctuation, a percentage, parentheses and hyphens: where PTB tokens and ``tokenize`` differ.
PUNCTUATED_REFS = [
    "The image is a non-contrast computed tomography (CT) scan of the brain, showing a hyper-dense area.",
    "The region of interest occupies approximately 4.1% of the image area, in the left lung.",
    "A hypodense lesion (2.5 cm) is present in the liver; no ascites.",
    "There's no focal abnormality in the abdomen: the kidneys are normal.",
]
PUNCTUATED_PREDS = [
    "The image is a CT scan of the brain, showing a hyper-dense area (left).",
    "The region of interest occupies approximately 4.1% of the image, in the right lung.",
    "A hypodense lesion is present in the liver.",
    "There's a focal abnormality in the abdomen.",
]


@pytest.mark.usefixtures("java")
def test_cider_on_ptb_tokens_is_coco_captions_cider() -> None:
    """The published pipeline: pycocoevalcap's PTBTokenizer on both sides, then Cider."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r}] for i, r in enumerate(PUNCTUATED_REFS)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PUNCTUATED_PREDS)})
    published, published_per_sample = Cider().compute_score(gts, res)

    ptb = ptb_tokenize(PUNCTUATED_PREDS + PUNCTUATED_REFS)
    result = cider(PUNCTUATED_PREDS, PUNCTUATED_REFS, ptb)
    assert result.score == pytest.approx(published, abs=1e-9)
    np.testing.assert_allclose(result.per_sample, published_per_sample, atol=1e-9)
    # Control: ctscribe's own tokeniser gives another number, so the equality above is not a given.
    assert abs(cider(PUNCTUATED_PREDS, PUNCTUATED_REFS).score - published) > 1e-3


@pytest.mark.usefixtures("java")
def test_ptb_tokenize_keeps_every_text_on_its_own_line() -> None:
    texts = ["A (CT) scan.", "", "line\u2028separator and\u0085next line", "A (CT) scan.", "左肺结节。"]
    tokens = ptb_tokenize(texts)
    assert tokens == {
        "A (CT) scan.": "a -lrb- ct -rrb- scan",  # coco-caption keeps its lower-cased bracket tokens
        "": "",
        "line\u2028separator and\u0085next line": "line separator and next line",
        "左肺结节。": "左肺结节 。",  # Chinese stays whole (CIDEr splits Chinese by character itself)
    }


def test_without_java_cider_says_it_is_not_comparable(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctscribe.evaluate.scores import score_system

    monkeypatch.setattr(text_metrics.shutil, "which", lambda name: None)
    assert ptb_tokenize(PUNCTUATED_REFS) is None
    records = [
        {"status": "ok", "text": p, "reference": r}
        for p, r in zip(PUNCTUATED_PREDS, PUNCTUATED_REFS, strict=True)
    ]
    metrics = score_system(records).block
    assert metrics["cider_tokenizer"] == "ctscribe"
    assert metrics["cider"] == pytest.approx(cider(PUNCTUATED_PREDS, PUNCTUATED_REFS).score, abs=1e-6)


def test_meteor_is_none_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_metrics.shutil, "which", lambda name: None)
    assert meteor([REF], [REF]) is None
    assert "meteor" not in all_metrics([REF, REF], [REF, REF], with_meteor=True)


@pytest.mark.usefixtures("java")
def test_meteor_with_java() -> None:
    """One JVM start (about 15 s): an identical, an unrelated and a Chinese sample."""
    result = meteor([REF, "a dog runs", "左肺结节"], [REF, "a cat sleeps on the mat", "左肺结节"])
    assert result is not None
    assert result.per_sample[0] == pytest.approx(1.0, abs=0.01)
    assert result.per_sample[1] < 0.5
    assert math.isnan(result.per_sample[2])
