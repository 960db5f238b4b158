"""The options of ``ctscribe evaluate`` that are its own: each default and its help, written once.

Generation's options (backend, batch size, answer length) are :class:`ctscribe.generate.options.
GenerateOptions`, shared with predict. Torch-free on purpose: the CLI reads these defaults and help
texts when it defines its commands, and ``ctscribe --help`` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvaluateOptions:
    """How an evaluation is reported."""

    examples: int = field(default=24, metadata={"help": "Examples in gallery.html."})


# The clinical entity metrics (ctscribe.evaluate.entity_metrics) and the models they load by default,
# by the names --metric-model takes: the packages' own defaults.
ENTITY_METRICS = ("ratescore", "radgraph")
ENTITY_MODELS = {
    "ratescore-ner": "Angelakeke/RaTE-NER-Deberta",
    "ratescore-encoder": "FremyCompany/BioLORD-2023-C",
    "radgraph": "radgraph-xl",  # radgraph downloads its archive from StanfordAIMI/RRG_scorers
}
