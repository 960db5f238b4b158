"""classify_modality and is_ct on hand-labelled captions in MedTrinity-25M's style."""

from __future__ import annotations

import pytest

from ctscribe.prepare.modality import CT_SOURCES, MODALITIES, NON_CT_SOURCES, classify_modality, is_ct

# (caption, source, expected modality), labelled by hand.
LABELLED: list[tuple[str, str | None, str]] = [
    # Plain CT of each body region.
    (
        "The image is a non-contrast computed tomography (CT) scan of the brain, showing the cerebral "
        "hemispheres, ventricles, and subarachnoid spaces without any medical devices visible. The region of "
        "interest, located centrally and in the middle of the image, exhibits an area of increased density "
        "compared to the surrounding brain tissue, which is indicative of an intracranial hemorrhage. This "
        "abnormality is likely affecting the surrounding brain structures due to mass effect.",
        None,
        "CT",
    ),
    (
        "The image is an axial CT slice of the chest, showing the lungs, heart, and mediastinum. The "
        "region of "
        "interest, located in the right upper lobe, exhibits a spiculated nodule. This nodule may be related "
        "to the adjacent pleural thickening.",
        None,
        "CT",
    ),
    (
        "The image is a contrast-enhanced CT scan of the abdomen, showing the liver, spleen, and kidneys. "
        "The "
        "region of interest, located in the left upper quadrant, exhibits a hypodense lesion in the spleen.",
        None,
        "CT",
    ),
    (
        "The image is a sagittal CT image of the lumbar spine, showing the vertebral bodies and "
        "intervertebral "
        "discs. The region of interest at L3 exhibits a compression fracture with loss of vertebral height.",
        None,
        "CT",
    ),
    (
        "The image is a computed tomography scan of the pelvis, showing the bladder, rectum, and iliac "
        "bones. "
        "The region of interest, located on the left side, exhibits a lytic lesion of the iliac wing.",
        None,
        "CT",
    ),
    (
        "The image is a non-contrast CT of the head showing a hyperdense middle cerebral artery. The "
        "region of "
        "interest is located in the left hemisphere.",
        None,
        "CT",
    ),
    (
        "The image is an NCCT of the brain. The region of interest, located in the right frontal lobe, shows "
        "a hypodense area consistent with an infarct.",
        None,
        "CT",
    ),
    (
        "The image is a CECT of the abdomen showing an enhancing mass in the pancreatic head.",
        None,
        "CT",
    ),
    # CT angiography and its abbreviations.
    (
        "The image is a CT angiography of the head and neck, showing the carotid and vertebral arteries. The "
        "region of interest exhibits a focal stenosis of the left internal carotid artery.",
        None,
        "CT",
    ),
    (
        "The image is a CTA of the thoracic aorta, showing an intimal flap consistent with a dissection.",
        None,
        "CT",
    ),
    (
        "The image is a CT angiogram of the circle of Willis showing an aneurysm of the anterior "
        "communicating artery.",
        None,
        "CT",
    ),
    # High-resolution CT.
    (
        "The image is an HRCT of the chest, showing the lung parenchyma with reticular opacities and "
        "honeycombing in the lower lobes.",
        None,
        "CT",
    ),
    (
        "The image is a high-resolution CT scan of the lungs showing ground-glass opacities.",
        None,
        "CT",
    ),
    # Reconstructions and reformats.
    (
        "The image is a coronal CT reconstruction of the abdomen and pelvis, showing the liver, kidneys, and "
        "bowel loops.",
        None,
        "CT",
    ),
    (
        "The image is a sagittal reformatted CT image of the cervical spine, showing alignment of the "
        "vertebrae.",
        None,
        "CT",
    ),
    (
        "The image is a coronal reconstruction of the chest and abdomen, showing the lungs and the liver.",
        None,
        "CT",
    ),
    # Cone-beam CT.
    (
        "The image is a cone-beam computed tomography (CBCT) scan of the mandible, showing a radiolucent "
        "lesion near the third molar.",
        None,
        "CT",
    ),
    (
        "The image is a CBCT of the maxilla showing the maxillary sinus.",
        None,
        "CT",
    ),
    # MRI captions that mention CT only as history, comparison or negation.
    (
        "The image is an MRI of the brain showing a lesion in the left temporal lobe, which was not "
        "visible on "
        "a prior CT scan. The region of interest exhibits high signal intensity.",
        None,
        "MRI",
    ),
    (
        "The image is a T2-weighted magnetic resonance image of the knee. The region of interest shows a "
        "meniscal tear. Compared with CT, the soft tissues are better delineated.",
        None,
        "MRI",
    ),
    (
        "The image is an axial FLAIR MRI of the brain showing periventricular white matter hyperintensities. "
        "A CT was unremarkable.",
        None,
        "MRI",
    ),
    (
        "The image is a magnetic resonance image rather than a CT, showing the lumbar spine with a disc "
        "herniation at L4-L5.",
        None,
        "MRI",
    ),
    (
        "The image is a diffusion-weighted image of the brain showing restricted diffusion in the left "
        "middle cerebral artery territory.",
        None,
        "MRI",
    ),
    (
        "The image is not a computed tomography scan but a T1-weighted MRI of the pelvis.",
        None,
        "MRI",
    ),
    # Fused PET and CT, SPECT/CT.
    (
        "The image is a fused PET/CT scan of the chest, showing increased FDG uptake in a right hilar lymph "
        "node. The CT component shows a soft tissue mass.",
        None,
        "PET",
    ),
    (
        "The image is an 18F-FDG PET-CT of the abdomen, showing hypermetabolic liver lesions.",
        None,
        "PET",
    ),
    (
        "The image is a positron emission tomography/computed tomography (PET/CT) scan of the whole body.",
        None,
        "PET",
    ),
    (
        "The image is a CT scan fused with PET data showing a hypermetabolic lung nodule.",
        None,
        "PET",
    ),
    (
        "The image is a positron emission tomography scan of the brain showing reduced uptake in the "
        "temporal lobes.",
        None,
        "PET",
    ),
    (
        "The image is a SPECT/CT image of the neck, showing a focus of tracer uptake in a parathyroid "
        "adenoma.",
        None,
        "other",
    ),
    (
        "The image is a single-photon emission computed tomography scan of the heart.",
        None,
        "other",
    ),
    # Optical coherence tomography is not CT.
    (
        "The image is an optical coherence tomography (OCT) scan of the retina, showing the retinal layers "
        "and a macular hole.",
        None,
        "other",
    ),
    (
        "The image is an OCT of the macula showing subretinal fluid. Unlike CT, it resolves the retinal "
        "layers.",
        None,
        "other",
    ),
    # X-ray.
    (
        "The image is a chest X-ray, showing the lungs, heart, and diaphragm. The region of interest in the "
        "right lower zone exhibits a consolidation.",
        None,
        "X-ray",
    ),
    (
        "The image is a frontal radiograph of the left hand, showing a fracture of the fifth metacarpal.",
        None,
        "X-ray",
    ),
    (
        "The image is a mammogram of the right breast, showing a spiculated mass in the upper outer "
        "quadrant.",
        None,
        "X-ray",
    ),
    (
        "The image is an angiogram of the coronary arteries, showing a stenosis of the left anterior "
        "descending artery.",
        None,
        "X-ray",
    ),
    # Ultrasound.
    (
        "The image is an ultrasound of the liver, showing a hyperechoic lesion in the right lobe.",
        None,
        "ultrasound",
    ),
    (
        "The image is a Doppler sonogram of the carotid artery showing turbulent flow.",
        None,
        "ultrasound",
    ),
    # Histopathology.
    (
        "The image is a histopathology slide stained with hematoxylin and eosin (H&E), showing nests of "
        "atypical epithelial cells.",
        None,
        "histopathology",
    ),
    (
        "The image is a microscopic view of an H&E stained section of the colon showing adenocarcinoma.",
        None,
        "histopathology",
    ),
    # Endoscopy.
    (
        "The image is an endoscopic view of the stomach, showing an ulcer on the lesser curvature.",
        None,
        "endoscopy",
    ),
    (
        "The image is a colonoscopy image showing a pedunculated polyp in the sigmoid colon.",
        None,
        "endoscopy",
    ),
    # No modality word at all, and comparison-only mentions of CT.
    (
        "The image shows a cross-section of the abdomen with the liver and the spleen. The region of "
        "interest "
        "is located in the upper left part of the image.",
        None,
        "other",
    ),
    (
        "The image shows a rounded lesion in the liver. It appears hyperdense on CT.",
        None,
        "other",
    ),
    (
        "The image shows a lesion in the kidney. Compared with a prior CT, the lesion has grown.",
        None,
        "other",
    ),
    ("The image shows octreotide uptake in the pancreas and acting muscle groups.", None, "other"),
    # The source decides.
    ("The image shows a lesion in the liver with surrounding edema.", "deeplesion", "CT"),
    ("The image shows a lung nodule in the right upper lobe.", "DeepLesion", "CT"),
    ("The image shows the chest with bilateral effusions.", "CT-RATE", "CT"),
    ("The image shows the kidneys and a renal mass.", "KiPA22_KiTS23_Cervix", "CT"),
    ("The image is a CT scan of the brain showing a tumour.", "brats", "MRI"),
    ("The image shows the lungs and the heart.", "nih_chest", "X-ray"),
    ("The image shows tissue with glandular structures.", "quilt_1m", "histopathology"),
    # pmc_oa is mixed: the caption decides.
    ("The image is a CT scan of the abdomen showing ascites.", "pmc_oa", "CT"),
    ("The image is an MRI of the brain showing a glioma.", "pmc_oa", "MRI"),
    ("The image shows a lesion in the liver.", "pmc_oa", "other"),
]


@pytest.mark.parametrize(("caption", "source", "expected"), LABELLED)
def test_classify_modality(caption: str, source: str | None, expected: str) -> None:
    assert classify_modality(caption, source) == expected


@pytest.mark.parametrize(("caption", "source", "expected"), LABELLED)
def test_is_ct_keeps_the_hand_labelled_ct_rows(caption: str, source: str | None, expected: str) -> None:
    assert is_ct(caption, source) is (expected == "CT")


def test_public_constants() -> None:
    assert MODALITIES == ("CT", "MRI", "X-ray", "PET", "ultrasound", "histopathology", "endoscopy", "other")
    assert {"deeplesion", "ct_rate", "flare23", "uls23", "bhx", "kipa22_kits23_cervix"} == CT_SOURCES
    assert "pmc_oa" not in NON_CT_SOURCES
    assert set(NON_CT_SOURCES.values()) <= set(MODALITIES)


@pytest.mark.parametrize("source", ["FLARE23", "uls23", "BHX", "ct_rate", "Ct_Rate"])
def test_ct_source_overrides_a_caption_without_ct(source: str) -> None:
    assert is_ct("The image is an image of the abdomen.", source)


@pytest.mark.parametrize("source", [None, "", "some_new_dataset"])
def test_unknown_or_missing_source_falls_back_to_caption(source: str | None) -> None:
    assert classify_modality("The image is an MRI of the knee.", source) == "MRI"


def test_file_name_hint_only_when_caption_is_silent_and_hint_is_unambiguous() -> None:
    silent = "The image shows the liver and the spleen."
    assert classify_modality(silent, None, "images/ct/case_0001.nii.gz") == "CT"
    assert classify_modality(silent, None, "images/mri/case_ct_0001.nii.gz") == "other"
    assert classify_modality(silent, None, "images/ct/case_0001.png") == "other"
    assert classify_modality("The image is an MRI of the liver.", None, "images/ct/case_0001.nii.gz") == "MRI"


@pytest.mark.parametrize(
    "caption",
    [
        "The image is an OCT scan of the optic disc.",
        "The image shows octreotide and acetate uptake in the act of secretion.",
        "The image is a SPECT scan of the brain.",
        "The image shows the ct value of the sample.",
    ],
)
def test_ct_inside_other_words_never_matches(caption: str) -> None:
    assert not is_ct(caption)
