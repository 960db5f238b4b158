"""The clinical-findings parser on hand-labelled captions, a real MedTrinity caption and the phantom's
known truth."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from ctscribe.clinical.findings import Findings, parse_findings
from ctscribe.evaluate.findings_scores import findings_sentence, score_findings
from ctscribe.fixtures.phantom import generate_rows


class Case(NamedTuple):
    regions: str  # canonical names, space-separated
    abnormalities: str
    laterality: str
    abnormal: bool | None
    caption: str


T, F, U = True, False, None

# Hand-labelled captions in MedTrinity's style. Laterality is what the finding sentences say in words
# (case 8 says the haematoma is left and the shift goes right, so both).
# fmt: off
CASES: list[Case] = [
    #    regions                               abnormalities                 laterality      abnormal
    # English: one or several findings, negation in its usual forms
    Case("brain",                                "",                           "",             F,
         "The image is a non-contrast CT scan of the brain. There is no evidence of haemorrhage, mass "
         "or midline shift. The ventricles and sulci appear normal."),
    Case("chest lung",                           "nodule",                     "right",        T,
         "Axial CT of the chest shows a 1.2 cm nodule in the right upper lobe of the lung. There is no "
         "pleural effusion."),
    Case("chest",                                "effusion atelectasis",       "bilateral",    T,
         "The image is a CT scan of the chest showing bilateral pleural effusions with adjacent "
         "atelectasis."),
    Case("pelvis",                               "",                           "",             F,
         "CT scan of the pelvis without fracture or dislocation."),
    Case("abdomen kidney",                       "mass tumour",                "left",         T,
         "The image is a CT scan of the abdomen, showing a large mass in the left kidney, which is "
         "consistent with renal cell carcinoma. No lymphadenopathy is seen."),
    Case("liver",                                "cyst lesion",                "right",        T,
         "The region of interest, located in the right lobe of the liver, shows a hypodense cystic "
         "lesion without enhancement."),
    Case("lung",                                 "",                           "",             F,
         "The lungs are clear without consolidation, effusion or pneumothorax."),
    Case("head brain",                           "haemorrhage midline shift",  "left right",   T,
         "CT of the head demonstrates an acute subdural hematoma along the left convexity with mass "
         "effect and midline shift to the right."),
    Case("spine",                                "fracture",                   "",             T,
         "The image is a CT scan of the lumbar spine, showing a compression fracture of the L1 "
         "vertebral body."),
    Case("abdomen liver spleen kidney",          "lesion metastasis",          "",             T,
         "Contrast-enhanced CT of the abdomen shows multiple hypodense liver lesions, suggestive of "
         "metastases. The spleen and kidneys appear unremarkable."),
    Case("chest",                                "pneumothorax",               "right",        T,
         "The image is an axial CT of the chest showing a right-sided pneumothorax."),
    Case("brain",                                "infarct",                    "left",         T,
         "Non-contrast CT of the brain shows a hypodense area in the left middle cerebral artery "
         "territory, consistent with an acute infarct. No haemorrhage is seen."),
    Case("kidney",                               "stone",                      "right",        T,
         "CT of the kidneys shows a 5 mm stone in the right renal pelvis without hydronephrosis."),
    Case("chest lung",                           "",                           "",             F,
         "The image is a CT scan of the chest. No focal abnormality is seen, and both lungs appear "
         "clear."),
    Case("",                                     "calcification nodule",       "left right",   T,
         "There is a calcified nodule in the left lower lobe and a small nodule in the right middle "
         "lobe."),
    Case("abdomen pelvis bowel",                 "inflammation",               "",             T,
         "CT of the abdomen and pelvis shows free fluid in the pelvis and a thickened appendix, "
         "consistent with appendicitis."),
    Case("head brain",                           "",                           "",             F,
         "Head CT: no acute intracranial abnormality."),
    Case("limb",                                 "fracture oedema",            "right",        T,
         "The image shows a comminuted fracture of the right femoral neck with surrounding soft tissue "
         "swelling."),
    Case("head",                                 "aneurysm",                   "left",         T,
         "CT angiography of the head shows a 7 mm aneurysm arising from the left internal carotid "
         "artery."),
    Case("brain",                                "lesion oedema",              "right",        T,
         "MRI of the brain shows a ring-enhancing lesion in the right frontal lobe with surrounding "
         "oedema, which was not visible on the prior CT scan."),
    Case("chest",                                "consolidation inflammation", "left",         T,
         "Chest X-ray shows consolidation in the left lower zone, suggestive of pneumonia."),
    Case("gallbladder",                          "stone",                      "",             T,
         "Ultrasound of the gallbladder demonstrates multiple gallstones without wall thickening."),
    Case("liver gallbladder",                    "",                           "",             F,
         "The liver is normal in size, with no focal lesion. The gallbladder is unremarkable."),
    Case("pancreas gallbladder",                 "mass",                       "",             T,
         "A large heterogeneous mass is seen in the pancreatic head, with dilatation of the bile duct."),
    Case("neck thyroid",                         "nodule",                     "right",        T,
         "CT of the neck shows an enlarged thyroid with a 2 cm hypodense nodule in the right lobe."),
    Case("chest",                                "effusion",                   "right",        T,
         "No pneumothorax is seen; however, a small right pleural effusion is present."),
    Case("brain",                                "",                           "",             F,
         "Hemorrhage is not seen. The brain parenchyma is normal."),
    Case("abdomen liver spleen kidney spine",    "",                           "",             F,
         "The image is a contrast-enhanced computed tomography (CT) scan of the abdomen, showing the "
         "liver, the spleen, both kidneys and the lumbar spine. No focal abnormality is seen, and the "
         "abdominal organs appear normal. The surrounding structures appear unremarkable."),
    Case("ovary",                                "cyst lesion",                "left",         T,
         "A cystic lesion cannot be excluded in the left ovary."),
    Case("lung adrenal",                         "mass nodule metastasis",     "left right",   T,
         "CT shows a mass in the right lung and a 1 cm nodule in the left adrenal gland, suspicious "
         "for metastatic disease."),
    Case("kidney",                               "cyst",                       "bilateral",    T,
         "Bilateral renal cysts are noted. No hydronephrosis or renal calculi."),
    Case("spine",                                "",                           "",             F,
         "There is no evidence of fracture of the cervical spine."),
    Case("chest",                                "",                           "",             U,
         "The image is a CT scan of the chest."),
    # Chinese
    Case("brain head",                           "haemorrhage",                "right",        T,
         "这是一张颅脑CT平扫图像，显示大脑半球、脑室和颅骨。"
         "感兴趣区位于图像右侧，可见高密度影，提示脑出血。该异常可能造成占位效应。"),
    Case("chest lung",                           "nodule",                     "right",        T,
         "胸部CT示右肺上叶见一结节，大小约1.5cm，边界清晰。"),
    Case("lung chest",                           "",                           "",             F,
         "双肺未见实变、积液或气胸，纵隔结构正常。"),
    Case("abdomen liver",                        "lesion metastasis",          "",             T,
         "腹部CT显示肝脏多发低密度病灶，考虑转移瘤。"),
    Case("limb",                                 "fracture oedema",            "left",         T,
         "左侧股骨颈骨折，周围软组织肿胀。"),
    Case("brain",                                "",                           "",             F,
         "颅内未见出血，脑室系统未见扩大，中线结构居中。"),
    Case("kidney",                               "stone",                      "right",        T,
         "右肾见一枚结石，直径约5mm左右，未见肾积水。"),
    Case("chest lung",                           "effusion atelectasis",       "bilateral left", T,
         "双侧胸腔积液，伴左肺下叶肺不张。"),
    Case("pelvis",                               "",                           "",             F,
         "盆腔CT未见明显异常。"),
    Case("brain",                                "lesion oedema",              "left",         T,
         "MRI显示左侧额叶占位性病变伴周围水肿。"),
]
# fmt: on


def _set(words: str) -> frozenset[str]:
    # "midline shift" is one canonical name: keep it together.
    words = words.replace("midline shift", "midline_shift")
    return frozenset(w.replace("_", " ") for w in words.split())


@pytest.mark.parametrize("case", CASES, ids=[f"case{k + 1}" for k in range(len(CASES))])
def test_hand_labelled_captions(case: Case) -> None:
    found = parse_findings(case.caption)
    assert found.regions == _set(case.regions)
    assert found.abnormalities == _set(case.abnormalities)
    assert found.laterality == _set(case.laterality)
    assert found.abnormal is case.abnormal


def test_negated_findings_are_recorded_as_absent() -> None:
    assert parse_findings("There is no evidence of haemorrhage.").absent == {"haemorrhage"}
    assert parse_findings("Pelvis without fracture.").absent == {"fracture"}
    assert parse_findings("No acute hemorrhage is seen.").absent == {"haemorrhage"}
    assert parse_findings("未见出血。").absent == {"haemorrhage"}
    assert parse_findings("无骨折。").absent == {"fracture"}
    # Negation stops at "but"; a type stated both ways is present.
    found = parse_findings("No haemorrhage, but a nodule is seen. A small haemorrhage is present.")
    assert found.abnormalities == {"nodule", "haemorrhage"} and found.absent == frozenset()
    # "mass effect" is not a mass, and an uncertain finding counts as present.
    assert parse_findings("There is mass effect on the ventricles.").abnormalities == frozenset()
    assert parse_findings("不除外结节。").abnormalities == {"nodule"}


@pytest.mark.parametrize(
    ("caption", "modality", "body_part"),
    [
        ("The image is a non-contrast computed tomography (CT) scan of the brain.", "CT", "head"),
        ("An axial T2-weighted magnetic resonance imaging (MRI) scan, unlike the prior CT.", "MRI", None),
        ("The image is a frontal chest X-ray, showing both lungs.", "X-ray", "chest"),
        ("PET/CT of the chest shows a hypermetabolic mass.", "PET", "chest"),
        ("Ultrasound of the right kidney.", "ultrasound", "abdomen"),
        ("这是一张胸部CT图像。", "CT", "chest"),
        ("头颅磁共振图像。", "MRI", "head"),
        ("The patient's pet was not scanned; Mr. Smith's image of the knee.", None, "limb"),
        ("The image is a histopathology slide stained with H&E.", None, None),
    ],
)
def test_modality_and_body_part(caption: str, modality: str | None, body_part: str | None) -> None:
    found = parse_findings(caption)
    assert found.modality == modality
    assert found.body_part == body_part


def test_longest_entry_wins() -> None:
    assert parse_findings("肾上腺结节").regions == {"adrenal"}
    assert parse_findings("CT of the thoracic spine").regions == {"spine"}
    assert parse_findings("stone in the renal pelvis").regions == {"kidney"}
    assert parse_findings("gallbladder wall").regions == {"gallbladder"}
    assert parse_findings("脑积水").abnormalities == {"hydrocephalus"}


def test_real_medtrinity_caption(real_caption) -> None:
    facts = Path(__file__).resolve().parents[3] / "shared" / "notes" / "facts.md"
    if facts.exists():  # the quote above is the one in the notes
        assert real_caption in " ".join(facts.read_text().split())
    found = parse_findings(real_caption)
    assert found == Findings(
        modality="CT",
        regions=frozenset({"brain"}),
        abnormalities=frozenset({"haemorrhage"}),
        laterality=frozenset(),
        abnormal=True,
        body_part="head",
    )
    assert findings_sentence(real_caption).startswith("The region of interest, located centrally")
    assert findings_sentence(real_caption).endswith("indicative of an intracranial hemorrhage.")


# What each phantom abnormality is called in the lexicon.
PHANTOM_TYPES = {
    "intracranial hemorrhage": {"haemorrhage"},
    "pulmonary nodule": {"nodule"},
    "lung mass": {"mass"},
    "hypodense liver lesion": {"lesion"},
    "hypodense spleen lesion": {"lesion"},
}


@pytest.mark.parametrize("short", [False, True])
def test_phantom_captions_match_their_truth(short: bool) -> None:
    checked = 0
    for truth, _, caption in generate_rows(40, seed=11, short=short):
        if not caption.strip():
            continue
        found = parse_findings(caption)
        if truth.modality == "CT":
            checked += 1
            assert found.modality == "CT"
            assert found.body_part == truth.region, caption
            assert found.abnormal is truth.lesion, caption
            assert found.laterality == ({truth.side} if truth.lesion else set()), caption
            if not truth.lesion:
                assert found.abnormalities == frozenset(), caption
            elif short:
                assert found.abnormalities == {"lesion"}
            else:
                assert found.abnormalities == PHANTOM_TYPES[truth.abnormality], caption
                assert parse_findings(truth.abnormality).abnormalities == PHANTOM_TYPES[truth.abnormality]
        elif truth.modality in ("MRI", "X-ray"):
            assert found.modality == truth.modality
            assert found.body_part == truth.region
        else:
            assert found.modality is None
    assert checked >= 25


def test_parse_and_score_end_to_end() -> None:
    refs = [parse_findings(c.caption) for c in CASES]
    perfect = score_findings(refs, refs)
    assert perfect["abnormality_f1"] == 1.0 and perfect["hallucination_rate"] == 0.0
    assert perfect["region_acc"] == 1.0 and perfect["laterality_acc"] == 1.0
    normal = parse_findings("CT of the chest. No abnormality is seen.")
    worst = score_findings([normal] * len(refs), refs)
    assert worst["abnormality_recall"] == 0.0 and worst["omission_rate"] == 1.0
