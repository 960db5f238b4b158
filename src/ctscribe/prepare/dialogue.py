"""Physician-style dialogue from a caption: the description first, then a clinician's follow-ups.

MedTrinity's captions have a fixed structure (modality and anatomy; the region of interest's
location and appearance; its relation to the surroundings), so a caption can be cut into the answers
a clinician would ask for: which organ, is there an abnormality and what kind, where, what might it
affect, and closed (yes/no) questions. Nothing is invented:

- **Open answers quote the caption**: the anatomy clause, the finding sentence(s), the "located …"
  phrase, the relation sentence. A follow-up is asked only when the caption holds its answer, and
  never when its answer would repeat an earlier one.
- **Closed questions ask about what the caption states**, read by the findings parser that
  evaluation uses (:mod:`ctscribe.clinical.findings`). "Yes" is the stated modality, body region,
  side or normal/abnormal result. "No" is asked only where the caption makes the answer exclusive: a
  modality other than the stated one (an image has one), a body part far from the stated one and
  named nowhere in the caption, the opposite side when exactly one side is stated, and the opposite
  of a stated normal/abnormal result. A finding the caption merely does not mention is never asked
  about.
- **A grounded row is asked where its region of interest is** ("Where is the region of interest?"),
  answered with the box prepare stated in the description (:func:`ctscribe.prepare.grounding.roi_sentence`).
- **Yes and no are balanced**: each attribute's question is asked in its yes form or its no form
  (normal/abnormal: "is there an abnormality?" or "does it look normal?"), chosen by a hash of the
  row key, so about half of the closed answers are "no" whatever the data set's share of abnormal
  images.

Question wording is drawn per row from English and Chinese pools (deterministically, like the
prompts); the answers are in the caption's language, as the descriptions are. Each record gets a
``dialogue`` list, one entry per question/answer pair, with the turn's ``kind`` (description, open,
closed), ``topic`` and, for closed questions, the ``expected`` answer, which ``ctscribe evaluate``
scores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ctscribe.clinical.findings import analyse_sentence, key_terms, parse_findings, split_sentences
from ctscribe.clinical.lexicons import REGIONS
from ctscribe.conversation.boxes import GridBox
from ctscribe.conversation.prompts import fraction
from ctscribe.prepare.grounding import roi_sentence
from ctscribe.text import is_chinese

# Question pools per topic and language; {x} is filled from the slot tables below.
QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "organ": {
        "en": (
            "Which organ is shown?",
            "What body region does this image show?",
            "Which part of the body was scanned?",
        ),
        "zh": ("图像显示的是哪个器官？", "这张图像是哪个部位的？", "扫描的是身体的哪个部位？"),
    },
    "abnormality": {
        "en": (
            "Is there an abnormality? What kind?",
            "Do you see anything abnormal? If so, what is it?",
            "What are the findings?",
        ),
        "zh": ("有没有异常？是什么异常？", "图像中有异常表现吗？是什么？", "主要的影像所见是什么？"),
    },
    "location": {
        "en": ("Where is it?", "Where is the abnormality located?", "Where exactly is the finding?"),
        "zh": ("它在哪里？", "异常位于什么位置？", "病变具体在哪个位置？"),
    },
    "roi_box": {
        "en": (
            "Where is the region of interest?",
            "Can you mark the region of interest?",
            "Where exactly is the region of interest in the image?",
        ),
        "zh": ("感兴趣区域在哪里？", "请标出感兴趣区域。", "感兴趣区域在图像中的具体位置是哪里？"),
    },
    "effect": {
        "en": (
            "What might it affect?",
            "How does it relate to the surrounding structures?",
            "What effect could it have on nearby structures?",
        ),
        "zh": ("它可能会影响什么？", "它与周围结构有什么关系？", "它可能对邻近结构造成什么影响？"),
    },
    "modality": {
        "en": ("Is this {x}?", "Was this image acquired with {x}?", "Is the imaging modality {x}?"),
        "zh": ("这是{x}图像吗？", "这张图像是{x}吗？", "成像方式是{x}吗？"),
    },
    "region": {
        "en": ("Is this a scan of the {x}?", "Does this image show the {x}?", "Was the {x} scanned?"),
        "zh": ("这是{x}的扫描吗？", "这张图像显示的是{x}吗？", "扫描部位是{x}吗？"),
    },
    "side": {
        "en": ("Is the finding on the {x} side?", "Is it on the {x}?", "Is the abnormality on the {x} side?"),
        "zh": ("病变在{x}侧吗？", "异常位于{x}侧吗？", "它在{x}侧吗？"),
    },
    "abnormal": {
        "en": (
            "Is there an abnormality?",
            "Is anything abnormal in this image?",
            "Do you see any abnormality?",
        ),
        "zh": ("有异常吗？", "这张图像有异常表现吗？", "能看到异常吗？"),
    },
    "normal": {
        "en": ("Does this image look normal?", "Is this a normal scan?", "Is the image unremarkable?"),
        "zh": ("这张图像正常吗？", "这是正常的扫描吗？", "图像表现正常吗？"),
    },
}
MODALITY_WORDS = {
    "CT": ("a CT scan", "CT"),
    "MRI": ("an MRI scan", "磁共振（MRI）"),
    "X-ray": ("an X-ray", "X线"),
    "ultrasound": ("an ultrasound image", "超声"),
}
PART_WORDS = {
    "head": ("head", "头部"),
    "neck": ("neck", "颈部"),
    "chest": ("chest", "胸部"),
    "abdomen": ("abdomen", "腹部"),
    "pelvis": ("pelvis", "盆腔"),
    "spine": ("spine", "脊柱"),
    "limb": ("limbs", "四肢"),
}
SIDE_WORDS = {"left": ("left", "左"), "right": ("right", "右")}
SLOTS = {"modality": MODALITY_WORDS, "region": PART_WORDS, "side": SIDE_WORDS}
# Body parts a "no" question may ask about: far enough from the stated one that one axial slice never
# shows both (chest and abdomen can share a slice, the spine is in all of them: never asked against
# each other), and only the three regions that dominate CT, each of which is also a frequent "yes":
# a part that is only ever asked about in "no" questions would give the answer away without the image.
FAR_PARTS = {
    "head": ("chest", "abdomen"),
    "neck": ("abdomen",),
    "chest": ("head",),
    "abdomen": ("head",),
    "pelvis": ("head", "chest"),
    "limb": ("head", "chest", "abdomen"),
}
ANSWERS = {"en": {"yes": "Yes.", "no": "No."}, "zh": {"yes": "是。", "no": "不是。"}}
ZH_PRESENCE = {"yes": "有。", "no": "没有。"}  # 有/没有 answers 有…吗 questions in Chinese

_LOCATION = re.compile(
    r"\b(?:located|situated|positioned)\s+(?P<en>[^,;.]+)|位于(?P<zh>[^，,；;。]+)", re.IGNORECASE
)
_RELATION = re.compile(
    r"\b(?:affect\w*|effect|caus\w*|lead\w*|compress\w*|displac\w*|impact\w*|press\w*|shift\w*|impinge\w*"
    r"|obstruct\w*|invad\w*|infiltrat\w*|extend\w*|involv\w*|complicat\w*|surround\w*|adjacent|nearby)\b"
    r"|影响|导致|引起|压迫|推移|占位效应|周围|邻近",
    re.IGNORECASE,
)
_PART_OF = {term.canonical: term.part for term in REGIONS}


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption states, as quotes of its own text (open answers) and parsed values (closed)."""

    language: str  # "en" or "zh": the caption's, so the answers' language
    anatomy: str | None  # the modality-and-anatomy clause
    finding: str | None  # the sentence(s) stating findings or a normal result
    location: str | None  # where the region of interest is, as the caption words it
    effect: str | None  # the sentence on the relation to the surroundings
    modality: str | None
    body_part: str | None
    parts_named: frozenset[str]  # every body part any named region belongs to
    side: str | None  # left or right, when the caption places its finding on exactly one side
    abnormal: bool | None
    named: frozenset[str]  # every concept the caption names (findings.key_terms): never a "no"


def _sentence_end(text: str, language: str) -> str:
    text = text.strip().rstrip(",;，；")
    if text and text[-1] not in ".!?。！？":
        text += "。" if language == "zh" else "."
    return text


def _anatomy_clause(sentence: str, language: str) -> str:
    """The sentence up to its first comma when that part already names a region (", showing …" goes)."""
    head = re.split(r"[,，]", sentence, maxsplit=1)[0]
    return _sentence_end(head if parse_findings(head).regions else sentence, language)


def caption_facts(caption: str) -> CaptionFacts:
    """Read the facts a (cleaned) caption states, in MedTrinity's three-sentence structure."""
    language = "zh" if is_chinese(caption) else "en"
    sentences = split_sentences(caption)
    findings = parse_findings(caption)
    anatomy_index = next((i for i, s in enumerate(sentences) if parse_findings(s).regions), None)
    finding_parts, effect_parts, location = [], [], None
    for index, sentence in enumerate(sentences):
        if index == anatomy_index:
            continue
        located = _LOCATION.search(sentence)
        stated = analyse_sentence(sentence)
        if stated.roi or located:
            if located and location is None:
                location = (located["en"] or located["zh"]).strip()
            finding_parts.append(sentence)
        elif _RELATION.search(sentence) and not (stated.present or stated.absent):
            effect_parts.append(sentence)
        elif (
            stated.present
            or stated.absent
            or stated.generic_abnormal
            or stated.normal
            or stated.normal_negated
        ):
            finding_parts.append(sentence)
    joiner = "" if language == "zh" else " "
    # One side stated for the finding, the other named nowhere: only then is the other side a "no".
    side = next(iter(findings.laterality)) if findings.laterality in ({"left"}, {"right"}) else None
    named = key_terms(caption)
    if side is not None and ({"left", "right"} - {side}) & named:
        side = None
    return CaptionFacts(
        language=language,
        anatomy=_anatomy_clause(sentences[anatomy_index], language) if anatomy_index is not None else None,
        finding=joiner.join(finding_parts) or None,
        location=location or None,
        effect=joiner.join(effect_parts) or None,
        modality=findings.modality,
        body_part=findings.body_part,
        parts_named=frozenset(_PART_OF[r] for r in findings.regions if _PART_OF[r] is not None),
        side=side,
        abnormal=findings.abnormal,
        named=named,
    )


@dataclass(frozen=True)
class Turn:
    """One follow-up question and its answer; ``expected`` is "yes"/"no" for closed questions."""

    kind: str  # open or closed
    topic: str
    question: str
    answer: str
    expected: str | None = None
    asked: str | None = None  # closed: the modality, body part or side asked about


def _pick(key: str, salt: str, options: tuple | list):
    return options[int(fraction(key, salt) * len(options))]


def _ask(key: str, topic: str, language: str, slot: str | None = None) -> str:
    template = _pick(key, f"question:{topic}", QUESTIONS[topic][language])
    return template.format(x=slot) if slot is not None else template


def _location_answer(facts: CaptionFacts) -> str | None:
    if facts.location:
        phrase = facts.location
        return _sentence_end(
            f"位于{phrase}" if facts.language == "zh" else f"It is located {phrase}", facts.language
        )
    return None


def _closed(
    key: str, topic: str, question_lang: str, answer_lang: str, asked: str | None, expected: str
) -> Turn:
    """A yes/no turn about ``asked`` (a modality, body part or side; None for normal/abnormal)."""
    slot = None if asked is None else SLOTS[topic][asked][0 if question_lang == "en" else 1]
    words = ZH_PRESENCE if answer_lang == "zh" and topic == "abnormal" else ANSWERS[answer_lang]
    return Turn("closed", topic, _ask(key, topic, question_lang, slot), words[expected], expected, asked)


def _yes_or_no(key: str, topic: str) -> bool:
    """Whether this row's question on ``topic`` takes its yes form: half the rows, by hash."""
    return fraction(key, f"closed:{topic}") < 0.5


def followups(key: str, caption: str, question_lang: str, box: GridBox | None = None) -> list[Turn]:
    """The follow-up turns a caption supports, in a clinician's order: open questions, then closed.

    ``caption`` is the plain caption; ``box``, the region of interest's box of a grounded row, adds
    the question where the region of interest is, after the location question."""
    facts = caption_facts(caption)
    answer_lang = facts.language
    turns: list[Turn] = []
    given: set[str] = {caption}

    def open_turn(topic: str, answer: str | None) -> None:
        if answer and answer not in given:
            given.add(answer)
            turns.append(Turn("open", topic, _ask(key, topic, question_lang), answer))

    open_turn("organ", facts.anatomy)
    open_turn("abnormality", facts.finding)
    if facts.abnormal:
        open_turn("location", _location_answer(facts))
    if box is not None:
        open_turn("roi_box", roi_sentence(box, answer_lang))
    if facts.abnormal:
        open_turn("effect", facts.effect)

    if facts.modality in MODALITY_WORDS:
        others = sorted(m for m in MODALITY_WORDS if m != facts.modality and m not in facts.named)
        asked = (
            facts.modality if _yes_or_no(key, "modality") or not others else _pick(key, "modality", others)
        )
        expected = "yes" if asked == facts.modality else "no"
        turns.append(_closed(key, "modality", question_lang, answer_lang, asked, expected))
    if facts.body_part in PART_WORDS:
        far = [p for p in FAR_PARTS.get(facts.body_part, ()) if p not in facts.parts_named]
        asked = facts.body_part if _yes_or_no(key, "region") or not far else _pick(key, "region", far)
        expected = "yes" if asked == facts.body_part else "no"
        turns.append(_closed(key, "region", question_lang, answer_lang, asked, expected))
    if facts.abnormal and facts.side is not None:
        other = "right" if facts.side == "left" else "left"
        asked = facts.side if _yes_or_no(key, "side") else other
        expected = "yes" if asked == facts.side else "no"
        turns.append(_closed(key, "side", question_lang, answer_lang, asked, expected))
    if facts.abnormal is not None:
        topic = "abnormal" if _yes_or_no(key, "abnormal") else "normal"
        expected = "yes" if facts.abnormal == (topic == "abnormal") else "no"
        turns.append(_closed(key, topic, question_lang, answer_lang, None, expected))
    return turns


def dialogue_meta(turns: Sequence[Turn]) -> list[dict]:
    """A record's ``dialogue`` field: one entry per question/answer pair, the description first."""
    entries = [{"kind": "description", "topic": "description", "expected": None}]
    return entries + [{"kind": t.kind, "topic": t.topic, "expected": t.expected} for t in turns]
