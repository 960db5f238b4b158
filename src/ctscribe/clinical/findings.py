"""The clinical findings a description states (English or Chinese).

N-gram metrics reward copying MedTrinity's template; a description that names the wrong organ or
invents a haemorrhage can still score well. This module reads what a description *says* — imaging
modality, body region and organs, abnormality types, side, normal or abnormal — with small
hand-written lexicons (:mod:`ctscribe.clinical.lexicons`, listed in docs/EVALUATION.md) and a
NegEx-style negation rule. Evaluate scores a prediction's findings against its reference's
(:mod:`ctscribe.evaluate.findings_scores`); prepare's dialogue asks questions about them.

Negation is written by hand on purpose: NegEx/ConText ports on PyPI (negspacy, medspaCy) are English
only and need spaCy pipelines; no maintained offline library covers English *and* Chinese. The rule,
per sentence:

1. Pseudo-negations are masked first: "no change", "cannot be excluded", 不除外, 不能排除 state no
   absence (an uncertain finding counts as present).
2. The sentence is cut into clauses at terminators: ";", ":", "but", "however", "although",
   "which", "except", "whereas", "while", ", and there/a/the …", the Chinese clause marks ，；：
   (not the list mark 、), 但, 然而.
3. A pre-negation trigger ("no", "not", "without", "absence of", "negative for", "free of",
   "rule(s) out", 未见, 无, 没有, 未发现, 排除, 不伴) negates what follows it up to the end of its
   clause ("no evidence of haemorrhage, fracture or effusion" negates all three) or up to the first
   verb after the negated words ("No abnormality is seen, and both lungs appear clear" stops at "is").
4. A post-negation trigger ("is not seen", "are absent", "was excluded", "has resolved", 不明显,
   可排除) negates what precedes it back to the clause start or the previous comma ("and
   calcification is not seen" does not reach a finding before the comma).

Findings named in a negated span are recorded as absent; any mention outside one makes the type
present. Hedged findings ("possible", "suggestive of", 可能) count as present.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ctscribe.clinical.lexicons import (
    ABNORMALITIES,
    GENERIC_ABNORMAL,
    LATERALITY,
    MODALITIES,
    NORMAL,
    REGIONS,
    ROI,
    Term,
)

# ---------------------------------------------------------------------------------------------
# The lexicons as patterns


def _alternatives(terms: Sequence[Term]) -> re.Pattern[str]:
    """One pattern for a lexicon; group ``t<k>`` names term k. Longest entries come first, so the
    longest of overlapping entries wins."""
    entries = [
        (rf"(?<![A-Za-z0-9])(?:{e})(?![A-Za-z0-9])", k) for k, t in enumerate(terms) for e in t.english
    ]
    entries += [(re.escape(c), k) for k, t in enumerate(terms) for c in t.chinese]
    entries.sort(key=lambda item: -len(item[0]))
    # The same term may appear several times: group names must be unique, so number the entries.
    pattern = "|".join(f"(?P<t{k}_{i}>{e})" for i, (e, k) in enumerate(entries))
    return re.compile(pattern, re.IGNORECASE)


def _term_of(match: re.Match[str], terms: Sequence[Term]) -> str:
    assert match.lastgroup is not None
    return terms[int(match.lastgroup[1:].split("_")[0])].canonical


_REGION_RE = _alternatives(REGIONS)
_ABNORMALITY_RE = _alternatives(ABNORMALITIES)
_LATERALITY_RE = _alternatives(LATERALITY)
_MODALITY_RE = _alternatives(MODALITIES)
_GENERIC_RE = _alternatives((GENERIC_ABNORMAL,))
_NORMAL_RE = _alternatives((NORMAL,))
_ROI_RE = _alternatives((ROI,))
_REGION_PART = {t.canonical: t.part for t in REGIONS}

# ---------------------------------------------------------------------------------------------
# Sentences, clauses and negation

_SENTENCE_END = re.compile(r"(?<=[。！？])\s*|(?<=[.!?])\s+")
_PSEUDO_NEGATION = re.compile(
    r"(?<![A-Za-z])(?:no\s+(?:significant\s+)?(?:interval\s+)?(?:change|increase|decrease)|not\s+only"
    r"|(?:can\s*not|could\s+not|not)\s+be\s+(?:excluded|ruled\s+out)|not\s+(?:excluded|ruled\s+out))(?![A-Za-z])"
    r"|不除外|不能排除|无法排除|未能排除|不排除|待排除",
    re.IGNORECASE,
)
_CLAUSE_END = re.compile(
    r"[;:；：，]|,(?=\s*(?:and|with)\s+(?:there|this|these|it|its|a|an|the)(?![A-Za-z]))"
    r"|(?<![A-Za-z])(?:but|however|although|though|whereas|while|which|except|apart\s+from|aside\s+from)(?![A-Za-z])"
    r"|(?<![A-Za-z])and(?=\s+(?:there|this|these|it)(?![A-Za-z]))"
    r"|但是|但|然而",
    re.IGNORECASE,
)
_PRE_NEGATION = re.compile(
    r"(?<![A-Za-z])(?:no|not|without|absence\s+of|negative\s+for|free\s+(?:of|from)|rules?\s+out|ruled\s+out"
    r"|ruling\s+out|nor|neither)(?![A-Za-z])"
    r"|未见明显|未见|未发现|未显示|未探及|无明显|没有|不伴有|不伴|排除|否认|无|未",
    re.IGNORECASE,
)
_VERB = re.compile(
    r"(?<![A-Za-z])(?:is|are|was|were|appears?|appeared|seems?|shows?|showed|demonstrates?|has|have|remains?"
    r"|measures?|involves?|extends?)(?![A-Za-z])",
    re.IGNORECASE,
)
_POST_NEGATION = re.compile(
    r"(?<![A-Za-z])(?:(?:is|are|was|were)\s+(?:not\s+(?:seen|visible|identified|present|noted|evident|detected"
    r"|demonstrated|appreciated|observed|apparent)|absent|excluded|ruled\s+out)|(?:has|have)\s+(?:resolved"
    r"|been\s+ruled\s+out))(?![A-Za-z])"
    r"|不明显|可排除|已排除",
    re.IGNORECASE,
)


def split_sentences(text: str) -> list[str]:
    """The sentences of a text, English (". ") or Chinese ("。"), whitespace collapsed."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s and s.strip()]


def _negated_spans(sentence: str) -> list[tuple[int, int]]:
    """Character spans of ``sentence`` under negation (see the module docstring)."""
    masked = _PSEUDO_NEGATION.sub(lambda m: " " * len(m.group()), sentence)
    cuts = [0, *(m.start() for m in _CLAUSE_END.finditer(masked)), len(masked)]
    spans = []
    for start, end in itertools.pairwise(cuts):
        clause = masked[start:end]
        for m in _PRE_NEGATION.finditer(clause):
            # The scope ends at the clause end or at the verb that follows the negated subject
            # ("No abnormality is seen, and both lungs appear clear"); a verb right after the trigger
            # ("does not show a fracture") is skipped.
            stop = end
            for verb in _VERB.finditer(clause, m.end()):
                if clause[m.end() : verb.start()].strip():
                    stop = start + verb.start()
                    break
            spans.append((start + m.end(), stop))
        for m in _POST_NEGATION.finditer(clause):
            comma = clause.rfind(",", 0, m.start())  # -1 when none: back to the clause start
            spans.append((start + comma + 1, start + m.start()))
    return spans


@dataclass(frozen=True)
class SentenceFindings:
    """What one sentence states: finding types present and absent, normal/abnormal, sides, ROI."""

    text: str
    present: frozenset[str]
    absent: frozenset[str]
    generic_abnormal: bool  # "abnormality" stated, not negated
    normal: bool  # "normal", "unremarkable", or a negated "abnormality"
    normal_negated: bool  # "not normal"
    roi: bool
    sides: frozenset[str]


# Parsing is regex-heavy (~10 ms a caption) and MedTrinity's sentences repeat: results are cached.
@functools.lru_cache(maxsize=1 << 16)
def analyse_sentence(sentence: str) -> SentenceFindings:
    """The :class:`SentenceFindings` of one sentence, negation applied (see the module docstring)."""
    spans = _negated_spans(sentence)

    def negated(m: re.Match[str]) -> bool:
        return any(a <= m.start() < b for a, b in spans)

    present, absent = set(), set()
    for m in _ABNORMALITY_RE.finditer(sentence):
        (absent if negated(m) else present).add(_term_of(m, ABNORMALITIES))
    generic = [negated(m) for m in _GENERIC_RE.finditer(sentence)]
    normal = [negated(m) for m in _NORMAL_RE.finditer(sentence)]
    # 左右 is "about" (约5cm左右), not a side: blank it out, keeping character positions.
    unsided = sentence.replace("左右", "  ")
    sides = {_term_of(m, LATERALITY) for m in _LATERALITY_RE.finditer(unsided) if not negated(m)}
    return SentenceFindings(
        text=sentence,
        present=frozenset(present),
        absent=frozenset(absent),
        generic_abnormal=any(not n for n in generic),
        normal=any(not n for n in normal) or any(generic),
        normal_negated=any(normal),
        roi=_ROI_RE.search(sentence) is not None,
        sides=frozenset(sides),
    )


# ---------------------------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class Findings:
    """What a description states.

    - ``modality``: CT, MRI, X-ray, ultrasound or PET, the first one named (the caption's first
      sentence states it; a later "compared with a prior CT" does not override); ``None`` if none.
    - ``regions``: every body region or organ named anywhere (canonical names of :data:`REGIONS`),
      negated or not: "no fracture of the spine" still talks about the spine.
    - ``body_part``: the coarse body part (:data:`~ctscribe.clinical.lexicons.BODY_PARTS`) of the first
      region named that has one, i.e. the scanned region of "The image is a CT scan of the chest, showing …".
    - ``abnormalities``: abnormality types (:data:`ABNORMALITIES`) stated as present.
    - ``absent``: types stated as absent ("no evidence of haemorrhage") and nowhere as present.
    - ``laterality``: left, right, bilateral as stated in sentences that carry a present finding or
      the region of interest (not "showing both lungs" in the anatomy overview); words, not
      anatomy: "left side of the image" is left.
    - ``abnormal``: True if a finding (or "abnormality", or "not normal") is stated as present; else
      False if the text says normal, unremarkable, "no abnormality", or negates a finding; else None.
    """

    modality: str | None
    regions: frozenset[str]
    abnormalities: frozenset[str]
    laterality: frozenset[str]
    abnormal: bool | None
    body_part: str | None = None
    absent: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=1 << 16)
def parse_findings(text: str) -> Findings:
    """The :class:`Findings` a description states (English, Chinese or mixed)."""
    sentences = [analyse_sentence(s) for s in split_sentences(text)]
    modality_match = _MODALITY_RE.search(text)
    modality = _term_of(modality_match, MODALITIES) if modality_match else None
    region_names = [_term_of(m, REGIONS) for m in _REGION_RE.finditer(text)]
    body_part = next((p for r in region_names if (p := _REGION_PART[r]) is not None), None)
    present = frozenset().union(*(s.present for s in sentences))
    absent = frozenset().union(*(s.absent for s in sentences)) - present
    sides = frozenset().union(*(s.sides for s in sentences if s.present or s.generic_abnormal or s.roi))
    if present or any(s.generic_abnormal or s.normal_negated for s in sentences):
        abnormal: bool | None = True
    elif absent or any(s.normal for s in sentences):
        abnormal = False
    else:
        abnormal = None
    return Findings(
        modality=modality,
        regions=frozenset(region_names),
        abnormalities=present,
        laterality=sides,
        abnormal=abnormal,
        body_part=body_part,
        absent=absent,
    )


def key_terms(text: str) -> frozenset[str]:
    """Every concept of the lexicons a text names: modalities, regions and organs, sides (any
    mention, negated or not), abnormality types stated as present, and ``no <type>`` for types stated
    as absent, as canonical names. What a short answer has to say: open-question recall counts how
    many of a reference answer's key terms a prediction names."""
    findings = parse_findings(text)
    sides = {_term_of(m, LATERALITY) for m in _LATERALITY_RE.finditer(text.replace("左右", "  "))}
    modalities = {_term_of(m, MODALITIES) for m in _MODALITY_RE.finditer(text)}
    return frozenset(
        modalities
        | findings.regions
        | sides
        | findings.abnormalities
        | {f"no {name}" for name in findings.absent}
    )
