"""Generated tokens as text: the grounding markers kept, every other special token dropped.

The grounding markers (``<|box_start|>`` and the rest, :data:`ctscribe.conversation.boxes.
GROUNDING_TOKENS`) are *special* tokens, so the usual ``skip_special_tokens=True`` removes them with
``<|im_end|>`` and the pads and leaves bare numbers that nothing can parse. Every backend therefore
decodes with the special tokens and drops all of them but the grounding ones here, so a box reaches
predict, evaluate and serve as the model wrote it, and the three backends return the same text:

- transformers and vLLM decode token ids with :func:`decode_keeping_grounding`, the other special ids
  read from the tokenizer (vLLM hands over its token ids; ctscribe decodes them, so both backends'
  texts come from one function);
- an OpenAI-compatible server only sends text: it is asked not to skip special tokens
  (:data:`KEEP_SPECIAL_TOKENS`: vLLM's server reads it, ``ctscribe serve`` accepts it and answers
  with the markers), and :func:`drop_control_tokens` removes the others from that text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ctscribe.conversation.boxes import GROUNDING_TOKENS

# Extra fields of an OpenAI chat request, as vLLM's server names them: keep special tokens in the text,
# and write adjacent ones without a space between them (as the tokenizer's own decode does).
KEEP_SPECIAL_TOKENS = {"skip_special_tokens": False, "spaces_between_special_tokens": False}
# Qwen's control tokens, as text: <|im_end|>, <|endoftext|>, <|vision_pad|>, ...
_CONTROL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


def hidden_special_ids(tokenizer) -> frozenset[int]:
    """The ids of every special token but the grounding ones: what a reader must never see."""
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    special |= set(tokenizer.all_special_ids)
    return frozenset(special - set(tokenizer.convert_tokens_to_ids(list(GROUNDING_TOKENS))))


def decode_keeping_grounding(tokenizer, ids: Sequence[int], hidden: frozenset[int] | None = None) -> str:
    """``ids`` as text with the grounding markers in place; ``hidden`` caches :func:`hidden_special_ids`."""
    hidden = hidden_special_ids(tokenizer) if hidden is None else hidden
    return tokenizer.decode([i for i in ids if i not in hidden], skip_special_tokens=False).strip()


def drop_control_tokens(text: str) -> str:
    """A server's text without Qwen's control tokens other than the grounding markers."""
    return _CONTROL_TOKEN.sub(lambda m: m.group(0) if m.group(0) in GROUNDING_TOKENS else "", text)
