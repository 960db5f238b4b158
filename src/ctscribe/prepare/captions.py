"""Clean MedTrinity-25M captions for training without changing what they say about the image.

Rules, in the order they are applied, and why:

1. Whitespace is collapsed to single spaces and stripped: LLM output carries stray newlines and
   double spaces, which the model would otherwise learn to reproduce.
2. Stray quotes at either end are removed: some captions were stored as quoted strings.
3. Leftovers of the generation prompt are removed. MedTrinity's images had a green bounding box drawn
   around the region of interest, and the captions refer to it ("marked by the green bounding box",
   "within the bounding box", "(highlighted by the bounding box)", "bounding box coordinates
   [0.23, 0.45, 0.51, 0.68]"). ctscribe removes the box from the images and a clinician's image has
   none, so a model trained on these phrases would describe a box that is not there. Only the phrase
   goes; the sentence around it stays. A sentence whose only content is where the box is ("The
   region of interest is within the bounding box.") goes whole. A phrase that is the predicate of a
   sentence with more to say ("is enclosed in the green box and measures 3 cm") stays: removing it
   would leave the sentence without its verb, and a broken sentence is worse training text.
4. The punctuation a removal leaves behind is tidied: a phrase set off by commas takes its commas
   with it ("The region of interest, marked by the green bounding box, shows" becomes "The region of
   interest shows") unless it closed an earlier parenthetical clause, empty brackets go, and a
   sentence that started with the phrase gets its capital letter back.
5. Spaces before punctuation are removed (" ," becomes ","): a tokenisation artefact, not content.
6. The caption ends with terminal punctuation: a trailing comma, colon or semicolon becomes ".", and
   "." is added after a final letter, digit, closing bracket, quote or "%", so every target ends
   like a sentence; a Chinese caption (``ctscribe translate``) gets the full stop "。".
7. A caption that is empty or whitespace only becomes "", which callers count as empty.

Nothing else is changed: measurements such as "approximately 4.1% of the image area", negations and
hedges are content.
"""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"\s+")
# Straight, typographic and guillemet quotes; the typographic ones are escaped for the linter.
_DOUBLE_QUOTES = '"`\u201c\u201d\u00ab\u00bb'
_QUOTES = _DOUBLE_QUOTES + "'\u2018\u2019"

# A marker left where a removed phrase opened a sentence, so the next word can be capitalised.
_SENTENCE_START_MARK = "\x00"

_COLOUR = r"(?:green|red|yellow|blue|rectangular|annotated|drawn|overlaid|superimposed)"
# "box", "box region", never "box-like".
_BOX_WORD = r"box(?:es)?(?:[\s-]+(?:region|area|annotation|outline|coordinates?)\b)?(?![\w-])"
# A box named with "bounding" or a colour: safe to remove after a bare preposition ("within the ...").
_NAMED_BOX = rf"(?:(?:{_COLOUR}[\s-]+)*bounding[\s-]+|(?:{_COLOUR}[\s-]+)+){_BOX_WORD}"
# Any box, including a plain "box": only after a participle such as "marked by the ...".
_ANY_BOX = rf"(?:{_COLOUR}[\s-]+)*(?:bounding[\s-]+)?{_BOX_WORD}"
_PARTICIPLES = (
    "marked",
    "indicated",
    "highlighted",
    "outlined",
    "enclosed",
    "delineated",
    "denoted",
    "shown",
    "encircled",
    "circled",
    "framed",
    "contained",
    "surrounded",
    "bounded",
    "demarcated",
    "boxed",
    "identified",
    "designated",
    "depicted",
    "represented",
    "captured",
    "defined",
    "specified",
    "localized",
    "localised",
    "labeled",
    "labelled",
    "seen",
    "visible",
    "located",
    "situated",
    "positioned",
    "found",
)
_PARTICIPLE = "(?:" + "|".join(_PARTICIPLES) + ")"
_RELATIVE = r"(?:which|that)\s+(?:is|are|was|were)\s+"
# Not right after a copula or a participle: "is enclosed in the green box and measures 3 cm" would lose
# its verb, so a predicate is kept (rule 3) unless the whole sentence is about the box (_BOX_SENTENCE).
_NOT_PREDICATE = "".join(rf"(?<!\b{word}\s)" for word in ("is", "are", "was", "were", *_PARTICIPLES))

_NUMBER = r"-?\d+(?:\.\d+)?"
_SYMBOL = r"(?:[xy](?:_?(?:min|max|\d))?|w(?:idth)?|h(?:eight)?)"
_ITEM = rf"(?:{_NUMBER}|{_SYMBOL})"
_COORDINATES = rf"[\[(]\s*{_ITEM}(?:\s*,\s*{_ITEM}){{3}}\s*[\])]"

# A sentence that only says where the box is: "The region of interest is within the bounding box."
_BOX_SENTENCE = re.compile(
    rf"(?:^|(?<=[.!?]\s))(?:[\w-]+\s+){{1,6}}?(?:is|are|was|were)\s+(?:{_PARTICIPLE}\s+)?"
    rf"(?:(?:by|at|in|within|inside|with)\s+)?(?:(?:the|a|an|its)\s+)?"
    rf"(?:{_ANY_BOX}(?:\s*{_COORDINATES})?|(?:coordinates?\s*(?:of\s*)?)?{_COORDINATES})\s*[.!?](?=\s|$)",
    re.IGNORECASE,
)

_ARTEFACT_PHRASES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(rf"(?P<lead>,\s*)?\s*(?:{phrase})(?P<trail>\s*,)?", re.IGNORECASE)
    for phrase in (
        # A coordinate list with its lead-in: "located at bounding box coordinates [0.2, 0.3, 0.5, 0.6]".
        rf"(?:(?:(?:located|positioned|situated|centred|centered|found)\s+)?(?:at|in|with)\s+)?"
        rf"(?:(?:the|its)\s+)?(?:{_NAMED_BOX}\s+)?(?:coordinates?\s*)?(?:(?:of|are|is|:|=)\s*)?"
        rf"(?:(?:approximately|roughly|about)\s+)?{_COORDINATES}",
        # "marked by the green bounding box", "as indicated by the box", "enclosed in the green box".
        rf"\b(?:{_RELATIVE}|{_NOT_PREDICATE})(?:as\s+)?{_PARTICIPLE}\s+(?:by|in|within|inside|with|using|via)\s+"
        rf"(?:the|a|an)\s+{_ANY_BOX}",
        # "within the bounding box", "located inside the green box".
        rf"\b(?:{_RELATIVE}|{_NOT_PREDICATE})(?:(?:located|situated|positioned|seen|visible|found|contained)\s+)?"
        rf"(?:within|inside|in)\s+(?:the|a)\s+{_NAMED_BOX}",
        # A bare "(bounding box)" or "(green box)".
        rf"\(\s*(?:the\s+)?{_NAMED_BOX}\s*\)",
    )
)

# Cheap test for whether any artefact pattern can match, so most captions skip the expensive ones.
_MAY_HAVE_ARTEFACT = re.compile(r"box|[\[(]\s*[-\dxyhw]", re.IGNORECASE)

_SENTENCE_BREAK = re.compile(r"[.!?]\s")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
_SPACE_AFTER_OPENING = re.compile(r"([(\[])\s+")
_PUNCT_AFTER_OPENING = re.compile(r"([(\[])\s*[,;]\s*")
_PUNCT_BEFORE_CLOSING = re.compile(r"\s*[,;]\s*([)\]])")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_COMMA_BEFORE_PUNCT = re.compile(r",\s*(?=[,.;:!?])")
_REPEATED_STOP = re.compile(r"([.!?])(?:\s+[.;:,])+")
_LEADING_PUNCT = re.compile(r"^[\s,.;:]+")
_CAPITALISE_MARK = re.compile(rf"{_SENTENCE_START_MARK}\s*(\w?)")
_TRAILING_SEPARATOR = re.compile(r"[\s,;:]+$")
_NEEDS_STOP = re.compile(rf"[\w)%\]{_QUOTES}]$")
_CHINESE_END = re.compile(r"[\u4e00-\u9fff][)\]%]?$")


def _drop_phrase(match: re.Match[str]) -> str:
    """Replacement for a removed phrase that keeps the sentence's commas balanced (rule 4)."""
    before = match.string[: match.start()].rstrip()
    if not before or before[-1] in ".!?":
        return " " + _SENTENCE_START_MARK
    if before[-1] in ";:":
        return ""
    sentence_so_far = _SENTENCE_BREAK.split(before)[-1]
    if match["lead"] and match["trail"]:
        # An odd number of commas before the phrase means it closed an open clause: keep one comma.
        return ", " if sentence_so_far.count(",") % 2 else " "
    return "," if match["trail"] else ""


def _strip_quotes(text: str) -> str:
    """Without stray quotes at the ends (rule 2): a pair wrapping the caption, or an unmatched one.

    A leading single quote is always stray; a lone trailing one is kept, as it may be an apostrophe
    ("the patients'").
    """
    text = text.strip()
    while len(text) > 1:
        unmatched = sum(text.count(quote) for quote in _DOUBLE_QUOTES) % 2 == 1
        if text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
        elif text[0] in _QUOTES and (unmatched or text[0] not in _DOUBLE_QUOTES):
            text = text[1:].strip()
        elif text[-1] in _DOUBLE_QUOTES and unmatched:
            text = text[:-1].strip()
        else:
            break
    return text


def clean_caption(text: str) -> str:
    """The caption with whitespace, quotes, prompt artefacts and punctuation fixed; "" if empty.

    See the module docstring for the rules and why each exists.
    """
    text = _strip_quotes(_WHITESPACE.sub(" ", text))
    if not text:
        return ""
    if _MAY_HAVE_ARTEFACT.search(text):
        text = _BOX_SENTENCE.sub("", text)
        for pattern in _ARTEFACT_PHRASES:
            text = pattern.sub(_drop_phrase, text)
        text = _CAPITALISE_MARK.sub(lambda match: match[1].upper(), text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = _PUNCT_AFTER_OPENING.sub(r"\1", text)
    text = _PUNCT_BEFORE_CLOSING.sub(r"\1", text)
    text = _COMMA_BEFORE_PUNCT.sub("", text)
    text = _REPEATED_STOP.sub(r"\1", text)
    text = _SPACE_AFTER_OPENING.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _LEADING_PUNCT.sub("", text)
    text = _strip_quotes(_WHITESPACE.sub(" ", text))
    text = _TRAILING_SEPARATOR.sub("", text)
    if _NEEDS_STOP.search(text):
        text += "。" if _CHINESE_END.search(text) else "."
    return text
