"""The record format of a prepared data set, and the inference messages a record's turns become.

A record is what ``ctscribe prepare`` (and ``translate``) write and everything downstream reads:
LLaMA-Factory's sharegpt form, so LLaMA-Factory trains on it unchanged::

    {"id": ..., "images": ["images/ab/<id>.png"],
     "messages": [{"role": "user", "content": "<image>Describe this CT image ..."},
                  {"role": "assistant", "content": "<the caption>"}, ...follow-up turns],
     "dialogue": [...]}   # with --dialogue: each turn's kind, topic and expected yes/no

The user turn holds the image as the text placeholder ``<image>`` (:data:`IMAGE_PLACEHOLDER`, where
LLaMA-Factory puts the image). At inference the same turn is a message whose content is a list of
image parts followed by the prompt (:func:`user_message`, what Qwen2-VL's processors and
OpenAI-compatible servers take); :func:`record_prompt` is the one bridge from a record to that.
"""

from __future__ import annotations

from ctscribe.conversation.boxes import GridBox
from ctscribe.conversation.prompts import choose_prompt, prompt_language
from ctscribe.data.dialogue import dialogue_meta, followups
from ctscribe.data.grounding import ground_caption

IMAGE_PLACEHOLDER = "<image>"


def sft_record(
    record_id: str,
    image: str,
    caption: str,
    split: str,
    *,
    lang: str = "en",
    answer_lang: str = "en",
    dialogue: bool = False,
    box: GridBox | None = None,
) -> dict:
    """A LLaMA-Factory sharegpt record. No system turn: the chat template supplies it.

    The prompt is chosen per record (:func:`ctscribe.conversation.prompts.choose_prompt`, in ``lang``:
    en, zh or both, asking for an ``answer_lang`` answer). ``box``, the region of interest on the
    image's 0-1000 grid, grounds the description (:func:`ctscribe.data.grounding.ground_caption`:
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


def record_text(record: dict, role: str) -> str | None:
    """The first ``role`` turn's text of a record, or None where it has none (a malformed record)."""
    for message in record.get("messages") or []:
        if (
            isinstance(message, dict)
            and message.get("role") == role
            and isinstance(message.get("content"), str)
        ):
            return message["content"]
    return None


def record_prompt(record: dict) -> str | None:
    """What the record asks of the image, without the placeholder: the prompt to ask at inference."""
    text = record_text(record, "user")
    return None if text is None else text.replace(IMAGE_PLACEHOLDER, "").strip()


def user_message(prompt: str, images: int = 1) -> dict:
    """A user turn with ``images`` image parts before the prompt, as Qwen2-VL was trained."""
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": prompt}]}
