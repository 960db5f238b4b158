"""The clinical scores a training run can choose its best checkpoint by, on generated descriptions.

Training keeps the checkpoint with the lowest validation loss by default, which need not be the one
that describes CT best: the loss rewards every token alike, the template's as much as the side or
the finding. With a recipe's ``metric_for_best_model`` set to one of :data:`ctscribe.recipe.CLINICAL_METRICS`,
the native engine describes a fixed validation subset at each evaluation and scores it here, with
the same functions as ``ctscribe evaluate`` (docs/EVALUATION.md), so the number that picks the
checkpoint is the number the evaluation later reports:

- ``abnormality_f1``, ``region_acc``: the findings parser's micro F1 and body-part accuracy;
- ``rouge_l``: ROUGE-L F1, mean over samples;
- ``box_iou``: mean IoU of the first boxes, over references with a box (NaN when none has one).

Only pure scoring lives here (no model, no files), in a layer below training (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from ctscribe.clinical.findings import parse_findings
from ctscribe.conversation.boxes import strip_grounding
from ctscribe.evaluate.findings_scores import score_findings
from ctscribe.evaluate.grounding import box_columns
from ctscribe.evaluate.text_metrics import rouge_l


def checkpoint_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Every score of :data:`ctscribe.recipe.CLINICAL_METRICS` for generated texts (grounding markup
    included) against their references."""
    plain = [strip_grounding(text) for text in predictions]
    expected = [strip_grounding(text) for text in references]
    findings = score_findings([parse_findings(t) for t in plain], [parse_findings(t) for t in expected])
    return {
        "abnormality_f1": findings["abnormality_f1"],
        "region_acc": findings["region_acc"],
        "rouge_l": rouge_l(plain, expected).score,
        "box_iou": box_columns(predictions, references)["mean_iou"].score(),
    }
