"""Small text utilities that every layer may use: which script a text is written in.

Prepare (prompt language, dialogue, grounding, translation) and evaluate (tokenisation, BLEU's
tokenizer) both ask whether a text is Chinese; the answer lives here, below both, so neither imports
the other for it.
"""

from __future__ import annotations

import re

CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
_LATIN_LETTER = re.compile("[A-Za-z]")

# Share of Chinese characters among Chinese characters and Latin letters from which a text is Chinese.
# A Chinese caption keeps "CT" and the odd English term; one Chinese character carries about as much
# as a whole English word, so a low threshold is right.
CHINESE_SHARE = 0.2


def is_chinese(text: str) -> bool:
    """True when Chinese characters make up at least 20% of the text's Chinese characters and Latin
    letters ("这是一张颅脑CT图像" is Chinese, an English caption with one Chinese word is not)."""
    cjk = len(_CJK_CHAR.findall(text))
    if cjk == 0:
        return False
    return cjk / (cjk + len(_LATIN_LETTER.findall(text))) >= CHINESE_SHARE
