"""The family's written-out chat template equals the tokenizer's own; token ids come from the tokenizer,
as in the config."""

import json

import pytest

from ctscribe.conversation.records import record_prompt, user_message
from ctscribe.conversation.template import TokenIds, render_conversation
from ctscribe.fixtures.tiny_model import ENDOFTEXT_ID, IMAGE_PAD_ID, VIDEO_PAD_ID
from ctscribe.models import family_for
from ctscribe.prepare.records import sft_record


@pytest.fixture(scope="module")
def template(tiny_model_dir):
    """The chat template of the tiny model's family, chosen from its config.json as training does."""
    return family_for(tiny_model_dir).template


def _inference_form(messages):
    """A record's messages as inference sends them: the first user turn with its image as a part."""
    first = user_message(record_prompt({"messages": messages}))
    return [first, *messages[1:]]


@pytest.mark.parametrize("name", ["one_turn", "dialogue", "chinese"])
def test_rendering_equals_the_tokenizers_chat_template(processor, conversations, template, name):
    messages = conversations[name]
    text, _ = render_conversation(messages, template)
    assert text == processor.apply_chat_template(_inference_form(messages))


def test_records_as_prepare_writes_them_render_as_the_template(processor, real_caption, template):
    record = sft_record("r1", "images/r1.png", real_caption, "train", dialogue=True)
    assert len(record["messages"]) > 4  # follow-ups: the multi-turn path is exercised
    text, spans = render_conversation(record["messages"], template)
    assert text == processor.apply_chat_template(_inference_form(record["messages"]))
    answers = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    assert [text[start:end] for start, end in spans] == [f"{answer}<|im_end|>" for answer in answers]


def test_a_system_turn_replaces_the_default_one(processor, conversations, template):
    messages = [{"role": "system", "content": "You read CT."}, *conversations["one_turn"]]
    text, _ = render_conversation(messages, template)
    assert template.default_system not in text and text.startswith(
        "<|im_start|>system\nYou read CT.<|im_end|>\n"
    )
    assert text == processor.apply_chat_template([messages[0], *_inference_form(messages[1:])])
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        render_conversation([{"role": "tool", "content": "x"}], template)


def test_token_ids_are_read_from_the_tokenizer_and_agree_with_the_model_config(
    processor, tiny_model_dir, template
):
    tokens = TokenIds.from_tokenizer(processor.tokenizer, template)
    assert tokens == TokenIds(image_pad=IMAGE_PAD_ID, video_pad=VIDEO_PAD_ID, pad=ENDOFTEXT_ID)
    assert tokens.pad == processor.tokenizer.pad_token_id
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (config["image_token_id"], config["video_token_id"]) == (tokens.image_pad, tokens.video_pad)


def test_a_tokenizer_without_the_vision_tokens_is_refused(processor, template):
    class OtherTokenizer:
        unk_token_id = 0

        def convert_tokens_to_ids(self, token):
            return 0 if token == "<|image_pad|>" else processor.tokenizer.convert_tokens_to_ids(token)

    with pytest.raises(ValueError, match=r"no <\|image_pad\|> token: not a tokenizer of this model family"):
        TokenIds.from_tokenizer(OtherTokenizer(), template)
