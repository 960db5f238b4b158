"""Stand-ins for the models RaTEScore and RadGraph-F1 load: random weights, the published architectures.

Run with the metrics environment's interpreter (``.venv-metrics/bin/python``, ``make metrics-env``),
which has the ``radgraph`` package whose classes build the RadGraph model::

    .venv-metrics/bin/python tests/support/entity_stand_ins.py OUT

It writes three model folders under OUT, each marked ``"ctscribe_stand_in": true`` in its
config.json, so that ctscribe reports what they give as a wiring check and never as a score:

- ``rate-ner``: RaTEScore's entity recogniser, a DeBERTa-v2 token classifier (as
  Angelakeke/RaTE-NER-Deberta) with B-/I- labels of RaTEScore's five entity types and O, and a
  DeBERTa-v2 tokenizer ([CLS]/[SEP], as the package's post-processing expects);
- ``biolord``: RaTEScore's synonym encoder, an MPNet encoder (as FremyCompany/BioLORD-2023-C);
- ``radgraph``: an extracted RadGraph archive as radgraph 0.1.18 reads it (config.json,
  vocabulary/, weights.th): a DyGIE++ model (its training template's modules, feed-forward sizes and
  span features) over a tiny BERT in ``radgraph-bert``, labels of RadGraph-XL's entity and relation
  types.

Sizes are tiny (hidden 32, 2 layers) so that the whole builds and scores in seconds on a CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAND_IN = {"ctscribe_stand_in": True}
# What the phantom set's captions say: enough for tokenizers that do not make every word [UNK].
VOCABULARY = (
    "the a of and with in no is are there at left right upper lower lobe lung liver kidney brain chest "
    "abdomen pelvis head neck ct scan image shows mass lesion nodule opacity effusion fracture "
    "hemorrhage tumor normal abnormal small large region mild acute evidence"
)
WORDS = tuple(VOCABULARY.split())
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
RATE_TYPES = ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")
RADGRAPH_ENTITIES = (
    "Anatomy::definitely present",
    "Anatomy::measurement::definitely present",
    "Observation::definitely present",
    "Observation::definitely absent",
    "Observation::uncertain",
    "Observation::measurement::definitely present",
)
RADGRAPH_RELATIONS = ("located_at", "modify", "suggestive_of")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DATASET = "radgraph-xl"  # the namespace prefix radgraph's reader gives every label


def _mark(folder: Path) -> None:
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **STAND_IN}, indent=2))


def _wordpiece_vocab(folder: Path, specials: list[str]) -> str:
    """A WordPiece vocab.txt of :data:`WORDS`, letters and ``specials`` in ``folder``."""
    pieces = specials + list(WORDS) + [f"##{c}" for c in LETTERS] + list(LETTERS + ".,")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(pieces)) + "\n")
    return str(folder / "vocab.txt")


def _unigram_tokenizer(specials: list[str]):
    """A SentencePiece-style Unigram tokenizer (as DeBERTa-v3's) over :data:`WORDS`, with
    ``[CLS] … [SEP]`` around every text, built with ``tokenizers`` (no sentencepiece model file)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = specials + [f"▁{w}" for w in WORDS] + list(LETTERS + ".,▁")
    vocab = [(piece, -float(i)) for i, piece in enumerate(dict.fromkeys(pieces))]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=specials.index("[UNK]")))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    cls, sep = specials.index("[CLS]"), specials.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tokenizer


def rate_ner(out: Path) -> Path:
    from transformers import DebertaV2Config, DebertaV2ForTokenClassification, DebertaV2TokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = DebertaV2TokenizerFast(
        tokenizer_object=_unigram_tokenizer(specials),
        **{f"{name}_token": f"[{name.upper()}]" for name in ("pad", "unk", "cls", "sep", "mask")},
    )
    labels = [f"{edge}-{kind}" for kind in RATE_TYPES for edge in "BI"] + ["O"]
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        **TINY,
        max_position_embeddings=512,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = out / "rate-ner"
    DebertaV2ForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _mark(folder)
    return folder


def biolord(out: Path) -> Path:
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    folder = out / "biolord"
    tokenizer = MPNetTokenizer(_wordpiece_vocab(folder, ["<pad>", "<s>", "</s>", "[UNK]", "<mask>"]))
    config = MPNetConfig(
        vocab_size=len(tokenizer),
        **TINY,
        pad_token_id=tokenizer.pad_token_id,
    )
    MPNetModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _mark(folder)
    return folder


def _bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(_wordpiece_vocab(folder, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    config = BertConfig(vocab_size=len(tokenizer), **TINY)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def radgraph(out: Path) -> Path:
    import torch
    from dotmap import DotMap
    from radgraph.allennlp.data import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    bert = str(_bert(out / "radgraph-bert"))
    indexer = {"type": "pretrained_transformer_mismatched", "model_name": bert, "max_length": 512}
    # DyGIE++'s training template (training_config/template.libsonnet), NER and relations trained.
    config = {
        "dataset_reader": {"type": "dygie", "token_indexers": {"bert": indexer}, "max_span_width": 8},
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": indexer}},
            "initializer": {},
            "module_initializer": {},
            "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "feature_size": 20,
            "max_span_width": 8,
            "target_task": "relation",
            "feedforward_params": {"num_layers": 2, "hidden_dims": 150, "dropout": 0.4},
            "modules": {
                "coref": {"spans_per_word": 0.3, "max_antecedents": 100, "coref_prop": 0},
                "ner": {},
                "relation": {"spans_per_word": 0.5},
                "events": {
                    "trigger_spans_per_word": 0.3,
                    "argument_spans_per_word": 0.8,
                    "loss_weights": {"trigger": 0.2, "arguments": 1.0},
                },
            },
        },
        **STAND_IN,
    }
    vocab = Vocabulary()
    for namespace, labels in (("ner_labels", RADGRAPH_ENTITIES), ("relation_labels", RADGRAPH_RELATIONS)):
        vocab.add_tokens_to_namespace(["", *labels], f"{DATASET}__{namespace}")
    folder = out / "radgraph"
    vocab.save_to_files(str(folder / "vocabulary"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))

    model_config = DotMap(json.loads(json.dumps(config["model"])))
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name=bert, max_length=512)}
    )
    for name in ("type", "embedder", "initializer", "module_initializer"):
        del model_config[name]
    torch.manual_seed(0)
    model = dygie.DyGIE(vocab=vocab, embedder=embedder, **model_config)
    torch.save(model.state_dict(), folder / "weights.th")
    return folder


def build(out: Path) -> dict[str, str]:
    """Every stand-in under ``out``: {what ctscribe's ``--metric-model`` calls it: folder}."""
    import torch

    torch.manual_seed(0)
    return {
        "ratescore-ner": str(rate_ner(out)),
        "ratescore-encoder": str(biolord(out)),
        "radgraph": str(radgraph(out)),
    }


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]))))
