"""The clinical findings a description states (English or Chinese), scored against the reference's.

N-gram metrics reward copying MedTrinity's template; a description that names the wrong organ or
invents a haemorrhage can still score well. This module reads what a description *says* — imaging
modality, body region and organs, abnormality types, side, normal or abnormal — with small
hand-written lexicons (:data:`REGIONS`, :data:`ABNORMALITIES`, :data:`LATERALITY`, listed in
docs/EVALUATION.md) and a NegEx-style negation rule, and scores a prediction against its reference.

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

import numpy as np

from ctscribe.evaluate.bootstrap import bootstrap_ci
from ctscribe.evaluate.text_metrics import is_chinese

# ---------------------------------------------------------------------------------------------
# Lexicons. English entries are regular expressions matched case-insensitively as whole words
# (letters or digits may not touch either end, so they also match next to Chinese characters);
# Chinese entries are literal strings. Overlapping entries resolve to the longest (肾上腺 is the
# adrenal gland, not the kidney 肾; "thoracic spine" is the spine, not the chest).


@dataclass(frozen=True)
class Term:
    """One canonical concept and the ways English and Chinese captions write it."""

    canonical: str
    english: tuple[str, ...]
    chinese: tuple[str, ...] = ()
    part: str | None = None  # regions only: the coarse body part it belongs to


BODY_PARTS = ("head", "neck", "chest", "abdomen", "pelvis", "spine", "limb")

REGIONS: tuple[Term, ...] = (
    Term(
        "brain",
        (
            r"brains?",
            r"cerebral",
            r"cerebrum",
            r"cerebell(?:um|ar)",
            r"intra-?cranial",
            r"brain\s?stem",
            r"subarachnoid",
            r"subdural",
            r"epidural",
            r"(?:lateral|third|fourth)\s+ventricles?",
            r"periventricular",
            r"(?:white|gr[ae]y)\s+matter",
            r"basal\s+ganglia",
            r"thalam\w*",
            r"(?:frontal|parietal|temporal|occipital)\s+lobes?",
            r"hemispheres?",
        ),
        (
            "颅脑",
            "颅内",
            "大脑",
            "小脑",
            "脑干",
            "脑室",
            "脑实质",
            "脑组织",
            "额叶",
            "顶叶",
            "颞叶",
            "枕叶",
            "脑",
        ),
        "head",
    ),
    Term(
        "head",
        (
            r"(?<!femoral\s)(?<!humeral\s)(?<!pancreatic\s)head(?!\s+of)",
            r"skull",
            r"cran(?:ium|ial)",
            r"calvari(?:um|a|al)",
        ),
        ("头部", "头颅", "颅骨"),
        "head",
    ),
    Term(
        "sinus",
        (r"(?:paranasal|maxillary|frontal|sphenoid)\s+sinus(?:es)?", r"ethmoid\w*"),
        ("鼻窦", "上颌窦"),
        "head",
    ),
    Term("orbit", (r"orbits?", r"orbital", r"eyeballs?", r"globes?"), ("眼眶", "眼球", "眼眶内"), "head"),
    Term(
        "neck",
        (r"(?<!femoral\s)neck", r"larynx", r"laryngeal", r"pharynx", r"pharyngeal", r"\w*pharyn\w*"),
        ("颈部", "咽", "喉"),
        "neck",
    ),
    Term("thyroid", (r"thyroid",), ("甲状腺",), "neck"),
    Term(
        "chest",
        (r"chest", r"thorax", r"thoracic", r"intrathoracic", r"mediastin(?:um|al)", r"pleura", r"pleural"),
        ("胸部", "胸腔", "胸廓", "纵隔", "胸膜", "胸片"),
        "chest",
    ),
    Term(
        "lung",
        (r"lungs?", r"pulmonary", r"bronch\w*", r"trache\w*", r"airways?", r"alveol\w*"),
        ("肺", "支气管", "气管"),
        "chest",
    ),
    Term(
        "heart",
        (
            r"heart",
            r"cardiac",
            r"pericardi\w*",
            r"myocardi\w*",
            r"(?:left|right)\s+ventricle",
            r"atri(?:um|a|al)",
            r"coronary",
        ),
        ("心脏", "心包", "心肌", "心房", "心室", "冠状动脉"),
        "chest",
    ),
    Term("breast", (r"breasts?", r"mammary"), ("乳腺", "乳房"), "chest"),
    Term("rib", (r"ribs?", r"costal"), ("肋骨",), "chest"),
    Term("aorta", (r"aort\w*",), ("主动脉",), None),
    Term(
        "abdomen",
        (r"abdomen", r"abdominal", r"intra-?abdominal", r"(?:retro)?peritone\w*", r"mesenter\w*"),
        ("腹部", "腹腔", "腹膜"),
        "abdomen",
    ),
    Term("liver", (r"liver", r"hepat\w*"), ("肝",), "abdomen"),
    Term(
        "gallbladder",
        (r"gall\s?bladder", r"biliary", r"bile\s+ducts?", r"cholecyst\w*"),
        ("胆囊", "胆管", "胆道"),
        "abdomen",
    ),
    Term("spleen", (r"spleen", r"splen\w*"), ("脾",), "abdomen"),
    Term("pancreas", (r"pancrea\w*",), ("胰",), "abdomen"),
    Term("kidney", (r"kidneys?", r"renal", r"nephr\w*"), ("肾",), "abdomen"),
    Term("adrenal", (r"adrenals?(?:\s+glands?)?", r"suprarenal"), ("肾上腺",), "abdomen"),
    Term("stomach", (r"stomach", r"gastric", r"gastro\w*"), ("胃",), "abdomen"),
    Term(
        "bowel",
        (
            r"bowels?",
            r"intestin\w*",
            r"colon",
            r"colonic",
            r"duoden\w*",
            r"jejun\w*",
            r"ile(?:um|al)",
            r"appendi\w*",
            r"rectum",
            r"rectal",
            r"sigmoid",
            r"ca?ec(?:um|al)",
        ),
        ("肠", "阑尾"),
        "abdomen",
    ),
    Term(
        "pelvis",
        (r"(?<!renal\s)pelvis", r"pelvic", r"sacrum", r"iliac", r"acetabul\w*"),
        ("盆腔", "骨盆", "骶骨", "髂骨"),
        "pelvis",
    ),
    Term("bladder", (r"(?:urinary\s+)?bladder",), ("膀胱",), "pelvis"),
    Term("prostate", (r"prostat\w*",), ("前列腺",), "pelvis"),
    Term("uterus", (r"uter(?:us|ine)", r"endometri\w*", r"cervix"), ("子宫",), "pelvis"),
    Term("ovary", (r"ovar(?:y|ies|ian)", r"adnex\w*"), ("卵巢",), "pelvis"),
    Term(
        "spine",
        (
            r"spines?",
            r"spinal(?:\s+cord)?",
            r"(?:cervical|thoracic|lumbar|sacral)\s+(?:spine|vertebra\w*)",
            r"vertebra\w*",
            r"intervertebral",
            r"paraspinal",
            r"lumbar",
        ),
        ("脊柱", "脊椎", "椎体", "椎骨", "腰椎", "颈椎", "胸椎", "骶椎", "椎间盘", "脊髓"),
        "spine",
    ),
    Term(
        "limb",
        (
            r"extremit(?:y|ies)",
            r"(?:fore)?arms?",
            r"legs?",
            r"thighs?",
            r"knees?",
            r"shoulders?",
            r"elbows?",
            r"wrists?",
            r"ankles?",
            r"hips?",
            r"femurs?",
            r"femor(?:al|a)",
            r"tibi(?:a|al)",
            r"fibula\w*",
            r"humer(?:us|al)",
            r"patell\w*",
        ),
        (
            "四肢",
            "上肢",
            "下肢",
            "膝",
            "肩",
            "肘",
            "腕",
            "踝",
            "股骨",
            "胫骨",
            "腓骨",
            "肱骨",
            "髋",
            "大腿",
            "小腿",
        ),
        "limb",
    ),
)

ABNORMALITIES: tuple[Term, ...] = (
    Term("haemorrhage", (r"ha?emorrhag\w*", r"bleed\w*", r"ha?ematomas?"), ("出血", "血肿")),
    Term("nodule", (r"(?:micro)?nodules?", r"nodular"), ("结节",)),
    Term(
        "mass",
        (r"(?<!muscle\s)(?<!body\s)mass(?:es)?(?![\s-]+effect)",),
        ("肿块", "团块", "包块", "肿物"),
    ),
    Term("fracture", (r"fractur\w*", r"broken"), ("骨折",)),
    Term("effusion", (r"effusions?",), ("积液",)),
    Term("lesion", (r"lesions?",), ("病变", "病灶", "病损")),
    Term(
        "tumour",
        (
            r"tumou?rs?",
            r"neoplas\w*",
            r"carcinoma\w*",
            r"cancer\w*",
            r"malignan\w*",
            r"sarcoma\w*",
            r"lymphoma\w*",
            r"gliom\w*",
            r"glioblastoma\w*",
            r"meningioma\w*",
            r"adenoma\w*",
        ),
        ("肿瘤", "癌", "恶性", "胶质瘤", "脑膜瘤", "淋巴瘤", "肉瘤", "腺瘤"),
    ),
    Term("metastasis", (r"metasta\w*",), ("转移",)),
    Term("cyst", (r"cysts?", r"cystic"), ("囊肿", "囊性")),
    Term("calcification", (r"calcifi\w*", r"calcific"), ("钙化",)),
    Term("oedema", (r"o?edema\w*", r"o?edematous", r"swelling", r"swollen"), ("水肿", "肿胀")),
    Term("infarct", (r"infarct\w*", r"isch(?:a)?emi\w*", r"stroke"), ("梗死", "梗塞", "缺血")),
    Term("consolidation", (r"consolidat\w*",), ("实变",)),
    Term("pneumothorax", (r"pneumothora\w*",), ("气胸",)),
    Term(
        "stone",
        (r"(?:gall)?stones?", r"calcul(?:us|i)", r"(?:nephro|uro|chole|choledocho)?lithiasis"),
        ("结石",),
    ),
    Term("atelectasis", (r"atelecta\w*", r"collapsed\s+lung"), ("肺不张",)),
    Term("abscess", (r"abscess\w*",), ("脓肿",)),
    Term("aneurysm", (r"aneurysm\w*",), ("动脉瘤",)),
    Term("hydrocephalus", (r"hydrocephal\w*", r"ventriculomegaly"), ("脑积水",)),
    Term("emphysema", (r"emphysema\w*",), ("肺气肿", "气肿")),
    Term("thrombosis", (r"thromb\w*", r"embol\w*"), ("血栓", "栓塞")),
    Term("opacity", (r"opacit(?:y|ies)", r"ground[\s-]glass"), ("磨玻璃",)),
    Term("lymphadenopathy", (r"lymphadenopath\w*", r"enlarged\s+lymph\s+nodes?"), ("淋巴结肿大",)),
    Term(
        "inflammation",
        (r"inflamm\w*", r"infect\w*", r"pneumonia", r"\w{3,}itis"),
        ("炎症", "感染", "炎"),
    ),
    Term("herniation", (r"herniat\w*", r"hernias?"), ("疝",)),
    Term("midline shift", (r"midline\s+shift",), ("中线移位", "中线结构移位")),
)

LATERALITY: tuple[Term, ...] = (
    Term(
        "bilateral",
        (
            r"bilateral(?:ly)?",
            r"both\s+sides",
            r"both\s+(?:the\s+)?(?:[a-z-]+\s+)?(?:lungs|kidneys|hemispheres|lobes|adrenals|ovaries|breasts|"
            r"orbits|eyes|legs|arms|hips|knees)",
        ),
        ("双侧", "两侧", "双肺", "两肺", "双肾", "两肾"),
    ),
    Term("left", (r"left(?:-sided)?",), ("左",)),
    Term("right", (r"right(?:-sided)?",), ("右",)),
)

MODALITIES: tuple[Term, ...] = (
    # PET first: "PET/CT" is a PET study. Acronyms are case-sensitive ("pet", "Mr." are not scans).
    Term("PET", (r"(?-i:PET)(?:[/-](?-i:CT))?", r"positron\s+emission\s+tomography"), ("正电子",)),
    Term(
        "CT",
        (r"(?-i:CT[A]?|HRCT|NCCT|CECT|MDCT)", r"computed\s+tomograph\w*", r"computeri[sz]ed\s+tomograph\w*"),
        ("计算机断层", "电子计算机断层"),
    ),
    Term(
        "MRI",
        (
            r"(?-i:MRI?|MRA)",
            r"magnetic\s+resonance(?:\s+imaging)?",
            r"T[12][\s-]weighted",
            r"(?-i:FLAIR|DWI)",
            r"diffusion[\s-]weighted",
        ),
        ("磁共振", "核磁共振", "核磁"),
    ),
    Term(
        "X-ray",
        (r"x[\s-]?rays?", r"radiograph\w*", r"(?:chest|plain)\s+films?", r"(?-i:CXR)"),
        ("X线", "X光", "平片", "胸片"),
    ),
    Term(
        "ultrasound",
        (
            r"ultrasound\w*",
            r"ultrasonograph\w*",
            r"sonograph\w*",
            r"sonogram",
            r"echocardiograph\w*",
            r"doppler",
        ),
        ("超声", "B超", "彩超"),
    ),
)

# Words that call the image abnormal without naming a type, and words that call it normal.
_GENERIC_ABNORMAL = Term(
    "abnormal", (r"abnormal(?:ity|ities)?", r"anomal(?:y|ies|ous)", r"patholog(?:y|ic|ical)"), ("异常",)
)
_NORMAL = Term(
    "normal",
    (r"normal", r"unremarkable", r"within\s+normal\s+limits", r"(?:appears?|are|is|remains?)\s+clear"),
    ("正常", "无特殊"),
)
_ROI = Term(
    "roi",
    (r"regions?\s+of\s+interest", r"areas?\s+of\s+interest", r"(?-i:ROI)"),
    ("感兴趣区", "感兴趣区域", "目标区域"),
)


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
_GENERIC_RE = _alternatives((_GENERIC_ABNORMAL,))
_NORMAL_RE = _alternatives((_NORMAL,))
_ROI_RE = _alternatives((_ROI,))
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
    - ``body_part``: the coarse body part (:data:`BODY_PARTS`) of the first region named that has one,
      i.e. the scanned region of "The image is a CT scan of the chest, showing …".
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


def findings_sentence(text: str) -> str:
    """The sentence(s) that state the findings: those naming an abnormality type (present or
    absent), the region of interest, or a normal result ("No focal abnormality is seen"). The
    anatomy overview ("The image is a CT scan of the chest, showing …") and the consequences
    ("This abnormality may cause …") are left out. "" when no sentence qualifies."""
    kept = [
        s.text
        for s in map(analyse_sentence, split_sentences(text))
        if s.present or s.absent or s.roi or s.normal or s.normal_negated
    ]
    return ("" if is_chinese(text) else " ").join(kept)


# ---------------------------------------------------------------------------------------------
# Scores

# Per-sample arrays score_findings returns; NaN where a sample's reference gives nothing to check.
PER_SAMPLE = ("region", "region_overlap", "tp", "fp", "fn", "laterality", "abnormal", "modality")


def _match(pred: object, ref: object) -> float:
    return float("nan") if ref is None else float(pred == ref)


def score_findings(predictions: Sequence[Findings], references: Sequence[Findings]) -> dict:
    """Findings scores of predictions against references (same order), all on 0..1.

    - ``region_acc``: share of samples whose prediction names the reference's body part
      (``body_part`` equal; a prediction naming none is wrong), over references that name one.
    - ``region_overlap``: mean Jaccard overlap of the organ/region sets, over references naming any.
    - ``abnormality_precision``/``_recall``/``_f1``: micro-averaged over abnormality types: a type in
      both is a true positive, only in the prediction a false positive, only in the reference a
      false negative; totals over the corpus, then P = tp/(tp+fp), R = tp/(tp+fn), F1 = 2tp/(2tp+fp+fn).
    - ``hallucination_rate``: share of predicted types absent from their reference, fp/(tp+fp).
    - ``omission_rate``: share of reference types missing from the prediction, fn/(tp+fn).
    - ``laterality_acc``: exact match of the side set, over references that state a side.
    - ``abnormal_acc``: normal/abnormal agreement, over references that state either.
    - ``modality_acc``: modality agreement, over references that name one.

    A score with nothing to count is NaN. ``per_sample`` holds one array per name in
    :data:`PER_SAMPLE` for :func:`findings_intervals`; ``n`` is the number of samples.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    rows = []
    for p, r in zip(predictions, references, strict=True):
        union = p.regions | r.regions
        rows.append(
            (
                _match(p.body_part, r.body_part),
                len(p.regions & r.regions) / len(union) if r.regions else float("nan"),
                len(p.abnormalities & r.abnormalities),
                len(p.abnormalities - r.abnormalities),
                len(r.abnormalities - p.abnormalities),
                _match(p.laterality, r.laterality or None),
                _match(p.abnormal, r.abnormal),
                _match(p.modality, r.modality),
            )
        )
    table = np.asarray(rows, dtype=float).reshape(len(rows), len(PER_SAMPLE))
    per_sample = {name: table[:, k] for k, name in enumerate(PER_SAMPLE)}
    totals = table[:, 2:5].sum(axis=0)[None, :]
    return {
        "n": len(rows),
        "region_acc": _nanmean(per_sample["region"]),
        "region_overlap": _nanmean(per_sample["region_overlap"]),
        "abnormality_precision": float(_precision(totals)[0]),
        "abnormality_recall": float(_recall(totals)[0]),
        "abnormality_f1": float(_micro_f1(totals)[0]),
        "hallucination_rate": float(1 - _precision(totals)[0]),
        "omission_rate": float(1 - _recall(totals)[0]),
        "laterality_acc": _nanmean(per_sample["laterality"]),
        "abnormal_acc": _nanmean(per_sample["abnormal"]),
        "modality_acc": _nanmean(per_sample["modality"]),
        "per_sample": per_sample,
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _precision(totals: np.ndarray) -> np.ndarray:  # columns tp, fp, fn
    return _ratio(totals[:, 0], totals[:, 0] + totals[:, 1])


def _recall(totals: np.ndarray) -> np.ndarray:
    return _ratio(totals[:, 0], totals[:, 0] + totals[:, 2])


def _micro_f1(totals: np.ndarray) -> np.ndarray:
    return _ratio(2 * totals[:, 0], 2 * totals[:, 0] + totals[:, 1] + totals[:, 2])


def findings_intervals(
    scores: dict, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every score of :func:`score_findings`.

    Accuracies resample their per-sample 0/1 values (NaN rows skipped); the micro-averaged scores
    are recomputed from resampled tp/fp/fn totals. The same seed gives every metric the same
    resamples.
    """
    ps = scores["per_sample"]
    counts = np.stack([ps["tp"], ps["fp"], ps["fn"]], axis=1)
    kw = {"n_resamples": n_resamples, "seed": seed, "alpha": alpha}
    out = {
        "region_acc": bootstrap_ci(ps["region"], **kw),
        "region_overlap": bootstrap_ci(ps["region_overlap"], **kw),
        "abnormality_precision": bootstrap_ci(counts, _precision, **kw),
        "abnormality_recall": bootstrap_ci(counts, _recall, **kw),
        "abnormality_f1": bootstrap_ci(counts, _micro_f1, **kw),
        "laterality_acc": bootstrap_ci(ps["laterality"], **kw),
        "abnormal_acc": bootstrap_ci(ps["abnormal"], **kw),
        "modality_acc": bootstrap_ci(ps["modality"], **kw),
    }
    low, high = out["abnormality_precision"]
    out["hallucination_rate"] = (1 - high, 1 - low)
    low, high = out["abnormality_recall"]
    out["omission_rate"] = (1 - high, 1 - low)
    return out
