"""The options of ``ctscribe prepare``, ``prepare-merge`` and ``translate``: each default and its help,
written once.

Torch-free on purpose: the CLI reads these defaults and help texts when it defines its commands, and
``ctscribe --help`` must not load the image path (transformers) to show them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ctscribe.conversation.prompts import fraction
from ctscribe.ct.options import ImageOptions
from ctscribe.models import DEFAULT_FAMILY

DATASET_NAME_HELP = "Dataset name in dataset_info.json."


@dataclass(frozen=True)
class ReadOptions:
    """How prepare reads its source: which layout of the release, in how many processes."""

    config: str = field(default="25M_demo", metadata={"help": "25M_demo (image, id, caption) or 25M_full."})
    # All cores but one, which finalize's single pass and the parent's bookkeeping keep busy.
    workers: int = field(default=max(1, (os.cpu_count() or 2) - 1), metadata={"help": "Worker processes."})


@dataclass(frozen=True)
class StageOptions:
    """What decides a row's staging record; a resumed or merged run must use the same."""

    modality: str = field(default="ct", metadata={"help": "Keep CT rows only, or every modality."})
    image: ImageOptions = field(default_factory=ImageOptions)

    def __post_init__(self) -> None:
        if self.modality not in ("ct", "all"):
            raise ValueError(f"--modality must be ct or all, not {self.modality!r}")


@dataclass(frozen=True)
class FinalizeOptions:
    """What decides splits and records; cheap to change: rerunning finalize applies new values."""

    lang: str = field(default="en", metadata={"help": "Prompt language (answers are the English captions)."})
    # Splits are drawn by patient (ctscribe.prepare.splits), so these are shares of patients, not rows.
    val_fraction: float = field(default=0.02, metadata={"help": "Share of patients in the val split."})
    test_fraction: float = field(default=0.02, metadata={"help": "Share of patients in the test split."})
    name: str = field(default="mllm_med", metadata={"help": DATASET_NAME_HELP})
    # Physician follow-up turns after the description (ctscribe.prepare.dialogue).
    dialogue: bool = field(
        default=False,
        metadata={
            "help": "Multi-turn records: the description, then a clinician's follow-up questions (organ, "
            "abnormality, location, effect, balanced yes/no) answered from the caption only, and for "
            "grounded rows where the region of interest is (its box). See docs/PREPARE.md."
        },
    )
    # The region of interest's box in the answer (ctscribe.prepare.grounding), where the image had one;
    # never with --roi-box keep, where the box is still drawn in the image (see grounding_mode).
    grounding: bool = field(
        default=True,
        metadata={
            "help": "Put the green ROI box, on the 0-1000 grid of the prepared image, into the answer after "
            f"the caption's region-of-interest phrase ({DEFAULT_FAMILY.name}'s grounding format). Never "
            "with --roi-box keep: the box stays visible in the image, so no answer is grounded. See "
            "docs/PREPARE.md."
        },
    )


@dataclass(frozen=True)
class TranslateOptions:
    """What the output records are (answer languages, prompt language, dataset name), and how the
    server is asked (answer length, concurrency, checks)."""

    answers: str = field(
        default="zh",
        metadata={"help": "zh: every answer Chinese; both: Chinese or English, half each (by id)."},
    )
    lang: str = field(
        default="zh", metadata={"help": "Prompt language (the prompts ask for the answer's language)."}
    )
    name: str = field(default=FinalizeOptions.name, metadata={"help": DATASET_NAME_HELP})
    max_tokens: int = field(
        default=1024, metadata={"help": "Longest translation; a longer one is a failure."}
    )
    batch_size: int = field(default=16, metadata={"help": "Concurrent requests (and cache checkpoint)."})
    check_answers: bool = field(
        default=True,
        metadata={
            "help": "Refuse answers cut off at --max-tokens or not mostly Chinese. --no-check-answers keeps "
            "any non-empty answer (bilingual servers; plumbing tests with a tiny model)."
        },
    )

    def __post_init__(self) -> None:
        if self.answers not in ("zh", "both"):
            raise ValueError(f"--answers must be zh or both, not {self.answers!r}")

    def answer_language(self, record_id: str) -> str:
        if self.answers == "zh":
            return "zh"
        return "zh" if fraction(record_id, "answer-lang") < 0.5 else "en"
