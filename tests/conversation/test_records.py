"""Reading records and the inference messages their turns become."""

from ctscribe.conversation.prompts import PROMPTS
from ctscribe.conversation.records import IMAGE_PLACEHOLDER, record_prompt, record_text, user_message
from ctscribe.prepare.records import sft_record


def test_record_prompt_is_the_user_turn_without_the_placeholder():
    record = sft_record("r1", "r1.png", "CT of the head.", "train")
    prompt = record_prompt(record)
    assert IMAGE_PLACEHOLDER not in prompt and prompt in PROMPTS["en", "en"]
    assert record_text(record, "assistant") == "CT of the head."
    # Malformed records give None, never an exception: predict reports them as bad records.
    assert record_prompt({"messages": [{"role": "user", "content": ["not", "text"]}]}) is None
    assert record_prompt({"messages": None}) is None
    assert record_text({"messages": [{"role": "user", "content": "<image>Hi"}]}, "assistant") is None


def test_user_message_puts_the_image_parts_before_the_prompt():
    assert user_message("Describe.") == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "Describe."}],
    }
    assert user_message("Compare.", images=2)["content"][:2] == [{"type": "image"}] * 2
