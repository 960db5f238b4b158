"""Writing prepared records: the sharegpt record of one image and the ``dataset_info.json`` entries.

The format itself (the ``<image>`` placeholder, reading a record's turns) belongs to
:mod:`ctscribe.conversation.records`, which every step reads; building a record needs prepare's
grounding and dialogue, so it lives here, in the step that writes records.
"""

from __future__ import annotations

from ctscribe.conversation.boxes import GridBox
from ctscribe.conversation.prompts import choose_prompt, prompt_language
from ctscribe.conversation.records import IMAGE_PLACEHOLDER
from ctscribe.prepare.dialogue import dialogue_meta, followups
from ctscribe.prepare.grounding import ground_caption
from ctscribe.prepare.options import FinalizeOptions


def sft_record(
    record_id: str,
    image: str,
    caption: str,
    split: str,
    *,
    lang: str = FinalizeOptions.lang,
    answer_lang: str = "en",
    dialogue: bool = FinalizeOptions.dialogue,
    box: GridBox | None = None,
) -> dict:
    """A LLaMA-Factory sharegpt record. No system turn: the chat template supplies it.

    The prompt is chosen per record (:func:`ctscribe.conversation.prompts.choose_prompt`, in ``lang``:
    en, zh or both, asking for an ``answer_lang`` answer). ``box``, the region of interest on the
    image's 0-1000 grid, grounds the description (:func:`ctscribe.prepare.grounding.ground_caption`:
    plain text in the answer, so LLaMA-Factory reads the record unchanged). With ``dialogue``, the
    description is followed by a clinician's follow-up questions and their answers from the caption
    (and the box), and the record's ``dialogue`` describes each turn for evaluation.
    """
    prompt = choose_prompt(record_id, split, lang, answer_lang)
    messages = [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}{prompt}"},
        {"role": "assistant", "content": caption if box is None else ground_caption(caption, box)},
    ]
    record = {"id": record_id, "messages": messages, "images": [image]}
    if dialogue:
        turns = followups(record_id, caption, prompt_language(record_id, lang), box)
        for turn in turns:
            messages += [
                {"role": "user", "content": turn.question},
                {"role": "assistant", "content": turn.answer},
            ]
        record["dialogue"] = dialogue_meta(turns)
    return record


def dataset_info(name: str) -> dict:
    """``dataset_info.json`` entries LLaMA-Factory reads unchanged with ``--dataset_dir DIR``."""
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }
    return {
        name: {"file_name": "train.json", **entry},
        f"{name}_val": {"file_name": "val.json", **entry},
        f"{name}_test": {"file_name": "test.json", **entry},
    }
