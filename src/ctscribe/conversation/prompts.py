"""User prompts for the SFT records: English and Chinese pools, chosen deterministically per row.

The answer is the caption, so a prompt never asks for a language the answer is not in: while the
captions are English, Chinese prompts ask (in Chinese) for an English description; once Chinese
captions exist (``ctscribe translate``), prompts in either language ask for a Chinese one. Two prompts of
each pool appear only in the test split, so evaluation also measures whether the model follows
instructions it was not trained on rather than memorised wording.
"""

from __future__ import annotations

import hashlib
from typing import Literal

PromptLang = Literal["en", "zh", "both"]

# (prompt language, answer language) -> prompts. The last HELD_OUT of each pool are test-only.
PROMPTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("en", "en"): (
        "Please describe this image in English and provide your diagnostic conclusion.",  # original recipe
        "Describe this CT image and give your diagnostic impression.",
        "What does this CT scan show? Describe the findings.",
        "Write a radiology-style description of this CT image.",
        "Describe the anatomy and any abnormality visible in this CT slice.",
        "Please analyse this CT image and describe what you see.",
        "Summarise the findings of this computed tomography image.",
        "Review this CT image and report the key findings.",
    ),
    ("zh", "en"): (
        "请用英文描述这张图像并给出你的诊断结论。",  # the original recipe's prompt, asking for English
        "请用英文描述这张CT图像，并给出诊断印象。",
        "这张CT图像显示了什么？请用英文描述所见。",
        "请用英文写出这张CT图像的影像学描述。",
        "请用英文描述这张CT切片中的解剖结构和异常表现。",
        "请分析这张CT图像，并用英文说明你的发现。",
        "请用英文总结这张计算机断层扫描图像的主要发现。",
        "请阅读这张CT图像，并用英文报告关键发现。",
    ),
    ("zh", "zh"): (
        "请用中文描述这张图像并给出你的诊断结论。",
        "请用中文描述这张CT图像，并给出诊断印象。",
        "这张CT图像显示了什么？请用中文描述所见。",
        "请用中文写出这张CT图像的影像学描述。",
        "请用中文描述这张CT切片中的解剖结构和异常表现。",
        "请分析这张CT图像，并用中文说明你的发现。",
        "请用中文总结这张计算机断层扫描图像的主要发现。",
        "请阅读这张CT图像，并用中文报告关键发现。",
    ),
    ("en", "zh"): (
        "Please describe this image in Chinese and provide your diagnostic conclusion.",
        "Describe this CT image in Chinese and give your diagnostic impression.",
        "What does this CT scan show? Describe the findings in Chinese.",
        "Write a radiology-style description of this CT image in Chinese.",
        "Describe the anatomy and any abnormality visible in this CT slice, in Chinese.",
        "Please analyse this CT image and describe what you see in Chinese.",
        "Summarise the findings of this computed tomography image in Chinese.",
        "Review this CT image and report the key findings in Chinese.",
    ),
}
HELD_OUT = 2

# The plain form in each pool ("Describe this CT image and give your diagnostic impression."): what
# predict and serve ask when the user gives no prompt.
PLAIN = 1


def description_prompt(prompt_lang: str, answer_lang: str) -> str:
    """The plain prompt in ``prompt_lang`` asking for a description in ``answer_lang``."""
    return PROMPTS[(prompt_lang, answer_lang)][PLAIN]


# Asked of a model that records no prompt of its own (ctscribe.model_settings): the description in
# the language the user picked, asked in that language.
DEFAULT_PROMPTS = {lang: description_prompt(lang, lang) for lang in ("en", "zh")}


def fraction(key: str, salt: str) -> float:
    """A stable number in [0, 1) from a row key: the same row gets the same choice on every run."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prompt_language(key: str, lang: PromptLang) -> str:
    """``en`` or ``zh`` for one row: ``both`` picks one per row, the same for all its questions."""
    if lang not in ("en", "zh", "both"):
        raise ValueError(f"unknown prompt language {lang!r}; choose en, zh or both")
    return lang if lang != "both" else ("en" if fraction(key, "lang") < 0.5 else "zh")


def choose_prompt(key: str, split: str, lang: PromptLang, answer_lang: str) -> str:
    """The prompt for one row: test rows draw from the held-out prompts, the others from the rest."""
    prompt_lang = prompt_language(key, lang)
    pool = PROMPTS.get((prompt_lang, answer_lang))
    if pool is None:
        raise ValueError(f"no {prompt_lang} prompts for {answer_lang} answers")
    candidates = pool[-HELD_OUT:] if split == "test" else pool[:-HELD_OUT]
    return candidates[int(fraction(key, "prompt") * len(candidates))]
