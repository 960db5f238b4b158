"""BERTScore with a tiny random BERT written to tmp_path (no download)."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch

from ctscribe.evaluate.bertscore import bertscore, default_layer, greedy_match

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD_LIST = """the a an of and in with is are was no not both left right image images ct scan scans mri
computed tomography chest brain head neck abdomen pelvis spine lung lungs heart liver kidney kidneys
showing shows shown appear appears clear normal abnormal abnormality area region interest mass lesion
nodule haemorrhage hemorrhage bleeding fracture effusion cyst oedema swelling side sides lobe small large
there this that which may cause pressure on structures surrounding visible seen scanned axial view
slice plane bright dark spot highlighted contrast dense"""
WORDS = _WORD_LIST.split()
CHINESE = list(
    "这是一张颅脑胸部腹部图像显示左右侧双肺心脏肝肾出血肿块结节未见明显异常区域可能引起压迫周围结构的和在有"
)
PUNCT = list(".,;:()-'，。；：")
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")
VOCAB = list(dict.fromkeys(SPECIAL + WORDS + CHINESE + PUNCT + LETTERS + [f"##{c}" for c in LETTERS]))

SENTENCES = [
    "The image is a computed tomography (CT) scan of the chest, showing both lungs and the heart.",
    "There is a small nodule in the right lung.",
    "这是一张颅脑CT图像，显示左侧出血。",
]
PARAPHRASE = (
    "The image is a CT scan of the chest, showing the lungs and the heart; no mass is seen.",
    "The image is a computed tomography (CT) scan of the chest, showing both lungs and the heart.",
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # Positional on purpose: transformers 5's BertTokenizer takes ``vocab``; ``vocab_file=`` is ignored.
    # A declared maximum length, as real BERT folders have (bert-score overflows without one).
    tokenizer = BertTokenizer(str(vocab_file), model_max_length=512)
    for text in [*SENTENCES, *PARAPHRASE]:
        assert tokenizer.unk_token not in tokenizer.tokenize(text), text
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(VOCAB),
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@functools.cache
def _tokenizer_and_model(path: str):
    from transformers import BertModel, BertTokenizer

    return BertTokenizer.from_pretrained(path), BertModel.from_pretrained(path).eval()


def _by_hand(prediction: str, reference: str, path: str, layer: int) -> float:
    """F1 from the model's own hidden states with plain numpy, one text at a time (no padding)."""
    tokenizer, model = _tokenizer_and_model(path)

    def embed(text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states[layer][0].numpy()
        hidden = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
        # [CLS] and [SEP] may be matched but are not averaged over (bert-score's idf_dict gives them 0)
        averaged = np.ones(len(hidden), dtype=bool)
        averaged[[0, -1]] = False
        return hidden, averaged

    c, c_avg = embed(prediction)
    r, r_avg = embed(reference)
    sim = c @ r.T
    precision = sim.max(axis=1)[c_avg].mean()
    recall = sim.max(axis=0)[r_avg].mean()
    return 2 * precision * recall / (precision + recall)


def test_identical_texts_score_one(tiny_bert):
    result = bertscore(SENTENCES, SENTENCES, tiny_bert, device="cpu")
    assert result.name == "bertscore"
    assert len(result.per_sample) == len(SENTENCES)
    np.testing.assert_allclose(result.per_sample, 1.0, atol=1e-5)
    assert result.score == pytest.approx(1.0, abs=1e-5)


def test_paraphrase_scores_below_one(tiny_bert):
    result = bertscore([PARAPHRASE[0]], [PARAPHRASE[1]], tiny_bert, device="cpu")
    assert 0.0 < result.score < 0.999


def test_matches_hand_computation(tiny_bert):
    predictions = [PARAPHRASE[0], SENTENCES[1], "左侧出血"]
    references = [PARAPHRASE[1], "No nodule is seen in the lungs.", SENTENCES[2]]
    for layer in (0, 1, 2):
        result = bertscore(predictions, references, tiny_bert, layer=layer, batch_size=2, device="cpu")
        expected = [_by_hand(p, r, tiny_bert, layer) for p, r in zip(predictions, references, strict=True)]
        np.testing.assert_allclose(result.per_sample, expected, atol=1e-5)
        assert result.score == pytest.approx(np.mean(expected), abs=1e-5)


def test_agrees_with_the_bert_score_package(tiny_bert):
    """The reference implementation, bert-score 0.3.13 with its defaults (no IDF, no rescaling), on the
    same local model and layer: F1 per sample equal to float32 rounding, across batches of 2."""
    import bert_score

    predictions = [PARAPHRASE[0], SENTENCES[1], "左侧出血", SENTENCES[0], "a lesion in the liver"]
    references = [PARAPHRASE[1], "No nodule is seen in the lungs.", SENTENCES[2], SENTENCES[0], SENTENCES[1]]
    for layer in (0, 1, 2):
        _, _, expected = bert_score.score(
            predictions, references, model_type=tiny_bert, num_layers=layer, batch_size=2, device="cpu"
        )
        ours = bertscore(predictions, references, tiny_bert, layer=layer, batch_size=2, device="cpu")
        np.testing.assert_allclose(ours.per_sample, expected.numpy(), atol=1e-6)
        assert len(set(np.round(ours.per_sample, 3))) >= 4  # distinct texts: the check compares something


def test_greedy_match_small_example():
    # candidate tokens (1,0) and (1,1); reference tokens (1,0), (0,1), (-1,0); all averaged over.
    # cosines: [[1, 0, -1], [.7071, .7071, -.7071]]
    # P = (1 + .7071) / 2 = .85355; R = (1 + .7071 - .7071) / 3 = 1/3
    cand = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    p, r, f = greedy_match(cand, ref, torch.ones(1, 2), torch.ones(1, 3))
    precision, recall = (1 + 2**-0.5) / 2, 1 / 3
    assert p.item() == pytest.approx(precision, abs=1e-6)
    assert r.item() == pytest.approx(recall, abs=1e-6)
    assert f.item() == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-6)
    # A padding position (NaN weight) is never matched, even when it would win; a 0 weight is matched
    # but not averaged over.
    ref_padded = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]])
    p2, r2, _ = greedy_match(cand, ref_padded, torch.ones(1, 2), torch.tensor([[1.0, 1.0, 1.0, torch.nan]]))
    assert (p2.item(), r2.item()) == pytest.approx((precision, recall), abs=1e-6)
    p3, _, _ = greedy_match(cand, ref_padded, torch.ones(1, 2), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert p3.item() == pytest.approx(1.0, abs=1e-6)


def test_chinese(tiny_bert):
    prediction, reference = "这是一张颅脑CT图像，未见明显异常。", SENTENCES[2]
    result = bertscore([prediction, reference], [reference, reference], tiny_bert, device="cpu")
    assert 0.0 < result.per_sample[0] < 0.999
    assert result.per_sample[1] == pytest.approx(1.0, abs=1e-5)


def test_per_sample_batching_and_interval(tiny_bert):
    predictions = [SENTENCES[1], PARAPHRASE[0], SENTENCES[2], "", SENTENCES[0]] * 2
    references = [SENTENCES[0], PARAPHRASE[1], "左侧出血", SENTENCES[1], SENTENCES[0]] * 2
    one = bertscore(predictions, references, tiny_bert, batch_size=1, device="cpu")
    many = bertscore(predictions, references, tiny_bert, batch_size=4, device="cpu")
    assert one.per_sample.shape == (len(predictions),)
    np.testing.assert_allclose(one.per_sample, many.per_sample, atol=1e-5)
    assert one.per_sample[3] == 0.0  # an empty prediction scores 0, as in bert-score
    low, high = many.ci(n_resamples=200)
    assert low <= many.score <= high


def test_default_layer_is_last_for_unknown_model(tiny_bert, tmp_path):
    assert default_layer(tiny_bert) == 2
    named = tmp_path / "bert-base-chinese"  # named after a model of bert-score's table
    named.mkdir()
    (named / "config.json").write_text('{"num_hidden_layers": 12}')
    assert default_layer(named) == 8


def test_errors(tiny_bert, tmp_path):
    with pytest.raises(FileNotFoundError, match="BERTScore model folder not found"):
        bertscore(["a"], ["a"], tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        bertscore(["a"], ["a"], tmp_path)
    with pytest.raises(ValueError, match="references"):
        bertscore(["a", "b"], ["a"], tiny_bert)
    with pytest.raises(ValueError, match="layer 3"):
        bertscore(["a"], ["a"], tiny_bert, layer=3, device="cpu")
    empty = bertscore([], [], tiny_bert)
    assert np.isnan(empty.score) and len(empty.per_sample) == 0


def test_warns_on_unknown_tokens(tiny_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="ctscribe.evaluate.bertscore"):
        bertscore(["ψψψ ωωω"], ["φφφ"], tiny_bert, device="cpu")
    assert "unknown" in caplog.text


def test_evaluate_scoring_adds_bertscore_when_given_a_model(tiny_bert):
    from ctscribe.evaluate.scores import score_system

    records = [
        {"status": "ok", "text": PARAPHRASE[0], "reference": PARAPHRASE[1]},
        {"status": "ok", "text": SENTENCES[1], "reference": SENTENCES[1]},
    ]
    metrics = score_system(records, bertscore_model=tiny_bert).block
    assert 0 < metrics["bertscore"] <= 1 and metrics["bertscore_layer"] == default_layer(tiny_bert)
    low, high = metrics["ci95"]["bertscore"]
    assert low <= metrics["bertscore"] <= high
    assert "bertscore" not in score_system(records).block
