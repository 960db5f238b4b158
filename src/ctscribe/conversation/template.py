"""A conversation as its model family's chat template renders it, and the template tokens' ids.

Training needs the character spans of the assistant answers (the loss is taken on them only), which
``apply_chat_template`` does not give, so each family writes its template out once
(``ChatTemplate.render`` in ``ctscribe.models``); ``tests/conversation/test_template.py`` checks it
equals the tokenizer's own template character for character. Each ``<image>`` placeholder of a
record becomes one image pad; training then repeats that pad to the image's token count.

The ids of the tokens code acts on (image pads, video pads, the padding token) are read from the
model's tokenizer (:meth:`TokenIds.from_tokenizer`) or its config (``config.image_token_id``,
``config.video_token_id``), never written as numbers: a checkpoint names them, and the tiny test model
(``ctscribe.fixtures.tiny_model``) only copies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctscribe.conversation.records import IMAGE_PLACEHOLDER
from ctscribe.models.family import ChatTemplate


@dataclass(frozen=True)
class TokenIds:
    """The ids of the template tokens that batching and training act on, read from a tokenizer."""

    image_pad: int
    video_pad: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer, template: ChatTemplate) -> TokenIds:
        """The ids ``tokenizer`` gives ``template``'s tokens; ValueError naming any it does not know."""
        wanted = (template.image_pad, template.video_pad, template.pad)
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in wanted}
        unknown = getattr(tokenizer, "unk_token_id", None)
        missing = [token for token, id_ in ids.items() if id_ is None or id_ == unknown]
        if missing:
            raise ValueError(
                f"the tokenizer has no {', '.join(missing)} token: not a tokenizer of this model family"
            )
        return cls(*(ids[token] for token in wanted))


def render_conversation(messages: list[dict], template: ChatTemplate) -> tuple[str, list[tuple[int, int]]]:
    """``template``'s text for a record's messages, and the character spans of the answers.

    A span covers an assistant answer and its end-of-turn token (what the model must learn to write,
    including where to stop), in every turn of a multi-turn conversation. Each ``<image>`` becomes
    one image pad (expanded later).
    """
    return template.render(messages, IMAGE_PLACEHOLDER)
