"""Choosing the best checkpoint by a clinical score: describe a fixed validation subset at each
evaluation and score the descriptions.

The validation loss, which training keeps the best checkpoint by otherwise, rewards every token
alike: a checkpoint can lower it by writing the template more surely while naming the wrong side.
With ``metric_for_best_model`` set to a clinical score, the native engine describes the first
``generation_eval_samples`` records of val.json (the same records at every evaluation, so the scores
compare checkpoints, not samples) with the model being trained, through the one generation engine
(:class:`ctscribe.generate.engine.TransformersEngine`, greedy) and scores them with the functions
``ctscribe evaluate`` reports (:func:`ctscribe.evaluate.checkpoint_scores.checkpoint_scores`).

Cost: one greedy generation pass over the subset per evaluation, on every process (each describes the
same records, so all agree on the best checkpoint). Records whose image cannot be read are left out
and counted when the subset is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from itertools import islice
from pathlib import Path

from ctscribe.conversation.records import user_message
from ctscribe.ct.images import ImageOptions
from ctscribe.ct.inputs import iter_inputs
from ctscribe.evaluate.checkpoint_scores import checkpoint_scores
from ctscribe.generate.engine import GenerationRequest, TransformersEngine

log = logging.getLogger(__name__)

ANSWER_MARGIN = 16  # tokens beyond the longest reference of the subset a description may run


class ValidationScorer:
    """``scorer(model)``: the clinical scores of ``model``'s descriptions of the validation subset."""

    def __init__(self, split: Path, count: int, processor, options: ImageOptions, batch_size: int) -> None:
        items = list(islice(iter_inputs([split]), count))
        skipped = Counter(item.error for item in items if item.error is not None or item.reference is None)
        if skipped:
            log.warning("validation descriptions: left out %s", dict(skipped))
        self.items = [item for item in items if item.error is None and item.reference is not None]
        self.processor, self.options, self.batch_size = processor, options, batch_size
        longest = max((len(processor.tokenizer(item.reference).input_ids) for item in self.items), default=0)
        self.max_new_tokens = longest + ANSWER_MARGIN

    def __call__(self, model) -> dict[str, float]:
        engine = TransformersEngine.from_loaded(
            model,
            self.processor,
            max_pixels=self.options.max_pixels,
            min_pixels=self.options.min_pixels,
            name="training",
        )
        was_training = model.training
        model.eval()
        try:
            texts = []
            for start in range(0, len(self.items), self.batch_size):
                batch = self.items[start : start + self.batch_size]
                requests = [
                    GenerationRequest(
                        [user_message(item.prompt)], [engine.prepare(item.image).image], self.max_new_tokens
                    )
                    for item in batch
                ]
                texts += [result.text for result in engine.generate(requests)]
        finally:
            model.train(was_training)
        return checkpoint_scores(texts, [item.reference for item in self.items])
