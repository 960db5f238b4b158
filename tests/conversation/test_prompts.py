"""Prompts: deterministic per row, held-out ones only in test, the language the answer is in."""

import pytest

from ctscribe.conversation.prompts import (
    DEFAULT_PROMPTS,
    HELD_OUT,
    PROMPTS,
    choose_prompt,
    description_prompt,
    prompt_language,
)


def test_each_pool_keeps_its_last_prompts_for_the_test_split():
    keys = [f"row{i}" for i in range(200)]
    for (lang, answer), pool in PROMPTS.items():
        test = {choose_prompt(key, "test", lang, answer) for key in keys}
        train = {choose_prompt(key, "train", lang, answer) for key in keys}
        assert test == set(pool[-HELD_OUT:])
        assert train == set(pool[:-HELD_OUT])


def test_the_same_row_gets_the_same_prompt_and_both_picks_one_language_per_row():
    assert choose_prompt("r7", "train", "both", "en") == choose_prompt("r7", "train", "both", "en")
    languages = {prompt_language(f"row{i}", "both") for i in range(100)}
    assert languages == {"en", "zh"}
    with pytest.raises(ValueError, match="unknown prompt language 'fr'"):
        prompt_language("r1", "fr")
    with pytest.raises(ValueError, match="no en prompts for fr answers"):
        choose_prompt("r1", "train", "en", "fr")


def test_default_prompts_are_the_plain_prompt_of_each_language():
    assert {"en": description_prompt("en", "en"), "zh": description_prompt("zh", "zh")} == DEFAULT_PROMPTS
    assert DEFAULT_PROMPTS["en"] == "Describe this CT image and give your diagnostic impression."
    assert all(prompt in PROMPTS[lang, lang][:-HELD_OUT] for lang, prompt in DEFAULT_PROMPTS.items())
