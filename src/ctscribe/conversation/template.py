"""Qwen2-VL-Instruct's chat template: the text a conversation renders to, and its special tokens' ids.

Training needs the character spans of the assistant answers (the loss is taken on them only), which
``apply_chat_template`` does not give, so the template is written out here, once;
``tests/conversation/test_template.py`` checks it equals the tokenizer's own template character for
character. Each ``<image>`` placeholder of a record becomes one ``<|image_pad|>`` between the vision
markers; training then repeats that pad to the image's token count.

The ids of the tokens code acts on (image pads, video pads, the padding token) are read from the
model's tokenizer (:meth:`TokenIds.from_tokenizer`) or its config (``config.image_token_id``,
``config.video_token_id``), never written as numbers: a checkpoint names them, and the tiny test model
(``ctscribe.fixtures.tiny_model``) only copies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctscribe.conversation.records import IMAGE_PLACEHOLDER

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Qwen's padding token (``pad_token`` of the Qwen2-VL tokenizers); padding is masked out of attention
# and loss, so its id matters only in being one the embedding table has.
PAD = "<|endoftext|>"
VISION_PROMPT = f"<|vision_start|>{IMAGE_PAD}<|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."  # what the template adds when a conversation has none


@dataclass(frozen=True)
class TokenIds:
    """The ids of the template tokens that batching and training act on, read from a tokenizer."""

    image_pad: int
    video_pad: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenIds:
        """The ids ``tokenizer`` gives the tokens; ValueError naming any it does not know."""
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (IMAGE_PAD, VIDEO_PAD, PAD)}
        unknown = getattr(tokenizer, "unk_token_id", None)
        missing = [token for token, id_ in ids.items() if id_ is None or id_ == unknown]
        if missing:
            raise ValueError(f"the tokenizer has no {', '.join(missing)} token: not a Qwen2-VL tokenizer")
        return cls(image_pad=ids[IMAGE_PAD], video_pad=ids[VIDEO_PAD], pad=ids[PAD])


def render_conversation(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The chat template's text for a record's messages, and the character spans of the answers.

    A span covers an assistant answer and its ``<|im_end|>`` (what the model must learn to write,
    including where to stop), in every turn of a multi-turn conversation. Each ``<image>`` becomes
    one ``<|image_pad|>`` (expanded later).
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0

    def add(text: str, train: bool = False) -> None:
        nonlocal length
        if train:
            spans.append((length, length + len(text)))
        parts.append(text)
        length += len(text)

    if not messages or messages[0]["role"] != "system":
        add(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {role!r} in a conversation")
        add(f"<|im_start|>{role}\n")
        if role == "assistant":
            add(f"{content}<|im_end|>", train=True)
            add("\n")
        else:
            add(f"{content.replace(IMAGE_PLACEHOLDER, VISION_PROMPT)}<|im_end|>\n")
    return "".join(parts), spans
