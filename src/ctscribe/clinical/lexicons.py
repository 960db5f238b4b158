"""The clinical vocabulary descriptions are read with: imaging modalities, body regions and organs,
abnormality types and sides, in English and Chinese (listed in docs/EVALUATION.md).

Data, not code: :mod:`ctscribe.clinical.findings` compiles them into its parser, which prepare's
dialogue (the questions it asks about a caption) and evaluate's findings scores both use.
"""

from __future__ import annotations

from dataclasses import dataclass

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
GENERIC_ABNORMAL = Term(
    "abnormal", (r"abnormal(?:ity|ities)?", r"anomal(?:y|ies|ous)", r"patholog(?:y|ic|ical)"), ("异常",)
)
NORMAL = Term(
    "normal",
    (r"normal", r"unremarkable", r"within\s+normal\s+limits", r"(?:appears?|are|is|remains?)\s+clear"),
    ("正常", "无特殊"),
)
ROI = Term(
    "roi",
    (r"regions?\s+of\s+interest", r"areas?\s+of\s+interest", r"(?-i:ROI)"),
    ("感兴趣区", "感兴趣区域", "目标区域"),
)
