"""The record format of a prepared data set, read, and the inference messages a record's turns become.

A record is what ``ctscribe prepare`` (and ``translate``) write (:mod:`ctscribe.prepare.records`) and
everything downstream reads:
LLaMA-Factory's sharegpt form, so LLaMA-Factory trains on it unchanged::

    {"id": ..., "images": ["images/ab/<id>.png"],
     "messages": [{"role": "user", "content": "<image>Describe this CT image ..."},
                  {"role": "assistant", "content": "<the caption>"}, ...follow-up turns],
     "dialogue": [...]}   # with --dialogue: each turn's kind, topic and expected yes/no

The user turn holds the image as the text placeholder ``<image>`` (:data:`IMAGE_PLACEHOLDER`, where
LLaMA-Factory puts the image). At inference the same turn is a message whose content is a list of
image parts followed by the prompt (:func:`user_message`, what the model families' processors
and OpenAI-compatible servers take); :func:`record_prompt` is the one bridge from a record to that.
"""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"


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
    """A user turn with ``images`` image parts before the prompt, as the base models were trained."""
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": prompt}]}
