"""Recognise the imaging modality of a MedTrinity-25M row, so that only CT rows are kept.

MedTrinity-25M's ``25M_demo`` subset has no modality column, so the modality has to be read from the
caption. Its full release adds ``source`` (the data set a row came from) and ``file_name``. Captions
were written by an LLM from a fixed prompt, one paragraph of about three sentences: modality and
anatomy ("The image is a non-contrast computed tomography (CT) scan of the brain, ..."), then the
region of interest, then its relation to the surroundings.

Rules, in the order they are applied, and why:

1. A known ``source`` decides (compared case-insensitively with everything but letters and digits
   dropped, so "DeepLesion", "CT-RATE" and "ct_rate" all match). A source data set holds one
   modality, which is stronger evidence than an LLM's wording. ``pmc_oa`` (figures from papers) is
   mixed, so it and any unknown source fall through to the caption.
2. The caption is read sentence by sentence and the first sentence that names a modality decides.
   The prompt makes the first sentence state the modality ("The image is a ... scan"); later
   sentences mention other modalities only as history or comparison ("not visible on a prior CT").
3. Within a sentence the earliest modality word wins ("a CT angiogram" is CT, "an MRI ... compared
   with CT" is MRI), because the sentence's subject comes first.
4. Compound names are matched before their parts and hide them: PET/CT, PET-CT, "positron emission
   tomography/computed tomography" and "CT fused with PET" are PET, since fused functional images are
   not the plain CT a clinician uploads; SPECT, SPECT/CT and "single photon emission computed
   tomography" are nuclear medicine ("other"); OCT and "optical coherence tomography" are "other".
   Otherwise the CT inside them would be read as CT.
5. A mention after a negation or in a comparison or history context ("not a CT", "rather than a CT",
   "unlike CT", "compared with CT", "prior CT", "on CT", "than CT") does not count: it names the
   modality the image is *not*. The context is the last few words of the mention's own clause, so a
   negation in another clause ("..., not an MRI, but a CT") does not leak. This is deliberately
   conservative: losing a CT row costs less than training the CT model on an MRI.
6. Weak words decide only when the sentence has no strong one: "angiogram" (X-ray, unless CT or MRI
   is named too), "stained"/"microscopic" (histopathology), "radiographic", "Hounsfield",
   "reformatted" and coronal/sagittal reconstructions (CT: reconstructions are mostly CT, but an MRI
   can be reformatted too), "gadolinium" (MRI), "FDG" (PET). They are common as incidental words.
7. Abbreviations are case-sensitive whole words ("CT" and "Ct", never "ct" inside a word, so "OCT",
   "SPECT", "act" and "octreotide" are not CT); spelled-out words are case-insensitive.
8. When the caption names no modality, ``file_name`` may still say CT, but only through an
   unambiguous hint: a NIfTI or DICOM file under a folder named ``ct``. File names are otherwise free
   text and too easy to misread.
9. Anything else is "other".
"""

from __future__ import annotations

import re

MODALITIES: tuple[str, ...] = (
    "CT",
    "MRI",
    "X-ray",
    "PET",
    "ultrasound",
    "histopathology",
    "endoscopy",
    "other",
)

CT_SOURCES: frozenset[str] = frozenset(
    {"deeplesion", "ct_rate", "flare23", "uls23", "bhx", "kipa22_kits23_cervix"}
)

NON_CT_SOURCES: dict[str, str] = {
    "brats": "MRI",
    "nih_chest": "X-ray",
    "chexpert": "X-ray",
    "padchest": "X-ray",
    "quilt_1m": "histopathology",
}

_NON_ALNUM = re.compile(r"[^a-z0-9]")


def _source_key(source: str) -> str:
    """Source names compared without case or separators: "CT-RATE", "ct_rate" and "CtRate" agree."""
    return _NON_ALNUM.sub("", source.lower())


_SOURCE_MODALITY: dict[str, str] = {
    **{_source_key(name): "CT" for name in CT_SOURCES},
    **{_source_key(name): modality for name, modality in NON_CT_SOURCES.items()},
}

# Abbreviations are whole words: no letter or digit on either side (a plural "s" is allowed).
_B = r"(?<![A-Za-z0-9])"
_E = r"s?(?![A-Za-z0-9])"
_PET_CT_LINK = r"\s*(?:/|-|\u2013|\+|\s(?i:and|with|combined\s+with|fused\s+with)\s|\s)\s*"
_COMPUTED_TOMOGRAPHY = r"(?i:comput(?:ed|eri[sz]ed)\s+(?:axial\s+)?tomograph\w*)"


def _cue(pattern: str, modality: str, *, weak: bool = False) -> tuple[re.Pattern[str], str, bool]:
    return re.compile(pattern), modality, weak


# Ordered: compound names first, because a match hides any later pattern's match that overlaps it.
_CUE_PATTERNS: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    # Fused PET and CT (rule 4).
    _cue(
        rf"{_B}(?:(?i:positron\s+emission\s+tomography)(?:\s*\(PET\))?|PET){_PET_CT_LINK}"
        rf"(?:CT|{_COMPUTED_TOMOGRAPHY})(?:\s*\(CT\))?(?![A-Za-z0-9])",
        "PET",
    ),
    _cue(rf"{_B}CT\s*(?:/|-|\u2013|\+)\s*PET{_E}", "PET"),
    _cue(
        rf"{_B}CT\s+(?:(?:scan|image)s?\s+)?(?i:fused|co-?registered|combined)\s+with\s+(?:PET|(?i:positron))",
        "PET",
    ),
    # Nuclear medicine and optical imaging, whose names contain "CT" or "tomography".
    _cue(rf"{_B}SPECT(?:\s*(?:/|-|\u2013|\+|\sand\s)\s*CT)?{_E}", "other"),
    _cue(r"(?i:\bsingle[\s-]+photon\s+emission(?:\s+computed)?\s+tomograph\w*)", "other"),
    _cue(rf"{_B}OCTA?{_E}", "other"),
    _cue(r"(?i:\boptical\s+coherence\s+tomograph\w*)", "other"),
    _cue(
        r"(?i:\b(?:scintigra\w*|gamma\s+camera|bone\s+scan|fundus\s+photograph\w*|dermat?oscop\w*))", "other"
    ),
    # CT.
    _cue(_COMPUTED_TOMOGRAPHY, "CT"),
    _cue(rf"{_B}(?:CT|Ct|CTA|CTPA|HRCT|NCCT|CECT|MDCT|MSCT|CBCT){_E}", "CT"),
    _cue(r"(?i:\b(?:cone[\s-]+beam|CAT\s+scan))", "CT"),
    # MRI.
    _cue(r"(?i:\bmagnetic\s+resonance)", "MRI"),
    _cue(rf"{_B}(?:f?MRI|MRA|MRV|MRCP|DWI|SWI|FLAIR|STIR|T[12]WI){_E}", "MRI"),
    _cue(
        rf"{_B}MR(?=[\s-]+(?i:imag|scan|angiogra|venogra|enterogra|cholangio|sequence|spectroscop|slice))",
        "MRI",
    ),
    _cue(
        r"(?i:\b(?:T[12]\*?|proton[\s-]+density|diffusion|susceptibility)[\s-]*weighted"
        r"|\bfluid[\s-]+attenuated\s+inversion|\bapparent\s+diffusion\s+coefficient)",
        "MRI",
    ),
    _cue(rf"{_B}ADC\s+maps?\b", "MRI"),
    # X-ray.
    _cue(r"(?i:\bx[\s-]?rays?\b|\bradiograph(?!ic)\w*|\b(?:chest|plain)\s+films?\b|\bmammogra\w*)", "X-ray"),
    _cue(
        r"(?i:\bfluoroscop\w*|\bdigital\s+subtraction\s+angiogra\w*|\bbarium\s+(?:swallow|enema|meal))",
        "X-ray",
    ),
    _cue(rf"{_B}(?:CXR|DSA){_E}", "X-ray"),
    # Ultrasound, histopathology, endoscopy, PET.
    _cue(r"(?i:\b(?:ultrasound|ultrason\w*|sonogra\w*|echocardiogra\w*|echogra\w*|doppler))", "ultrasound"),
    _cue(
        r"(?i:\b(?:histopatholog\w*|histolog\w*|ha?ematoxylin|immunohistochem\w*|cytolog\w*)"
        r"|\bbiopsy\s+specimens?|micrograph\w*)",
        "histopathology",
    ),
    _cue(rf"{_B}H\s*&\s*E(?![A-Za-z0-9])", "histopathology"),
    _cue(
        r"(?i:(?:endo|colono|gastro|laparo|broncho|cysto|arthro|duodeno|sigmoido|thoraco|hystero|laryngo)scop\w*)",
        "endoscopy",
    ),
    _cue(r"(?i:\bpositron\s+emission)", "PET"),
    _cue(rf"{_B}PET{_E}", "PET"),
    # Weak words (rule 6).
    _cue(r"(?i:\b(?:angiogra\w*|arteriogra\w*|venogra\w*))", "X-ray", weak=True),
    _cue(r"(?i:\bradiographic\w*)", "X-ray", weak=True),
    _cue(r"(?i:\bstain(?:ed|ing)?\b|\bmicroscop\w*)", "histopathology", weak=True),
    _cue(
        r"(?i:\bhounsfield|\breformat(?:ted|ion)\b|\bmultiplanar\s+reconstruct\w*"
        r"|\b(?:coronal|sagittal)\s+(?:plane\s+)?(?:reconstruct\w*|reformat\w*))",
        "CT",
        weak=True,
    ),
    _cue(r"(?i:\bgadolinium)", "MRI", weak=True),
    _cue(rf"{_B}FDG(?![A-Za-z0-9])", "PET", weak=True),
)

# Rule 5: the clause a mention sits in starts after the last of these.
_CLAUSE_BOUNDARY = re.compile(
    r"[,;:()\[\]]|\b(?:but|whereas|while|although|though|however|which|where|that)\b", re.IGNORECASE
)
_CONTEXT_WORDS = 6
_DISCOUNT_ANYWHERE = re.compile(
    r"\b(?:not|never|rather\s+than|instead\s+of|unlike|as\s+opposed\s+to|in\s+contrast\s+to|compared"
    r"|comparison|comparing|versus|vs|prior|previous|previously|earlier|preceding|former|further"
    r"|correlat\w*)\b",
    re.IGNORECASE,
)
_DISCOUNT_ADJACENT = re.compile(
    r"\b(?:on|than)(?:\s+(?:a|an|the|this|that|his|her|their|its))?\s*$", re.IGNORECASE
)

# A sentence ends at . ! or ? followed by space and a capital letter, bracket or quote ("4.1%" stays).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")

# Rule 8: a NIfTI or DICOM file somewhere under a folder named "ct".
_CT_FILE_HINT = re.compile(r"(?:^|[/\\])ct[/\\](?:.*[/\\])?[^/\\]+\.(?:nii(?:\.gz)?|dcm)$", re.IGNORECASE)


def _is_discounted(sentence: str, start: int) -> bool:
    """Whether the mention at ``start`` is negated or only a comparison (rule 5)."""
    clause = _CLAUSE_BOUNDARY.split(sentence[:start])[-1]
    window = " ".join(clause.split()[-_CONTEXT_WORDS:])
    return bool(_DISCOUNT_ANYWHERE.search(window) or _DISCOUNT_ADJACENT.search(window))


def _sentence_modality(sentence: str) -> str | None:
    """The modality one sentence names (rules 3 to 7), or None when it names none that counts."""
    taken: list[tuple[int, int]] = []
    strong: list[tuple[int, str]] = []
    weak: list[tuple[int, str]] = []
    for pattern, modality, is_weak in _CUE_PATTERNS:
        for match in pattern.finditer(sentence):
            start, end = match.span()
            if any(start < taken_end and taken_start < end for taken_start, taken_end in taken):
                continue
            # A discounted mention still hides its parts: "a prior PET/CT" must not leave a CT behind.
            taken.append((start, end))
            if not _is_discounted(sentence, start):
                (weak if is_weak else strong).append((start, modality))
    chosen = min(strong or weak, default=None)
    return chosen[1] if chosen else None


def classify_modality(caption: str, source: str | None = None, file_name: str | None = None) -> str:
    """One of MODALITIES, for a caption and, when known, the row's source and file name.

    See the module docstring for the rules and why each exists.
    """
    if source:
        known = _SOURCE_MODALITY.get(_source_key(source))
        if known:
            return known
    for sentence in _SENTENCE_BREAK.split(caption.strip()):
        modality = _sentence_modality(sentence)
        if modality:
            return modality
    if file_name and _CT_FILE_HINT.search(file_name):
        return "CT"
    return "other"


def is_ct(caption: str, source: str | None = None, file_name: str | None = None) -> bool:
    """Whether a row is CT: the one question the CT-only data set asks of classify_modality."""
    return classify_modality(caption, source, file_name) == "CT"
