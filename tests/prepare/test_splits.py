import pytest

from ctscribe.prepare.splits import assign_split, split_key

# Names in the full release's real forms (facts.md: reported on the data set's issue tracker), and
# variants of them that only change what a split must ignore: slice, study, series, scan, box.
DEEPLESION = (
    "_data5_langgao_MedBench_Data_od_dataset_DeepLesion_Images_png_17_Images_png_"
    "{patient}_{study}_01_{slice}__98.3207_236.573_17.3433_16.83699999999999.jpg"
)
CQ500 = (
    "_data2_langgao-mm_bhx-brain-bounding-box_CQ500-CT-{n}_CQ500CT{n} CQ500CT{n}_Unknown Study_"
    "CT PLAIN THIN_CT{slice}__0_135_228_61_55.jpg"
)


@pytest.mark.parametrize(
    ("name", "source", "key", "rule"),
    [
        (
            DEEPLESION.format(patient="001087", study="10", slice="184"),
            "deeplesion",
            "DeepLesion-001087",
            "DeepLesion patient",
        ),
        ("seg_train_558_a_2-right lung.nii-105.jpg", "ct_rate", "CT-RATE-train_558", "CT-RATE patient"),
        ("train_558_b_1.nii-12.jpg", "ct_rate", "CT-RATE-train_558", "CT-RATE patient"),
        ("valid_558_a_1.nii-12.jpg", "ct_rate", "CT-RATE-valid_558", "CT-RATE patient"),
        (CQ500.format(n=22, slice="000015"), "bhx", "CQ500-CT-22", "CQ500 patient"),
        ("FLARE23_0042_0000.nii_17.jpg", "flare23", "FLARE23_0042", "FLARE case"),
        ("FLARE22_Tr_0042_0000.nii_17.jpg", "flare23", "FLARE22_Tr_0042", "FLARE case"),
        ("kits23_case_00042_imaging.nii_200.jpg", "kipa22_kits23_cervix", "KiTS-case_00042", "KiTS case"),
        # DeepLesion repackaged by another source keys to the same patient.
        (
            DEEPLESION.format(patient="001087", study="02", slice="007"),
            "uls23",
            "DeepLesion-001087",
            "DeepLesion patient",
        ),
        # Fallbacks: a folder; a flat name without its suffix and trailing slice number; no name at all.
        ("deeplesion/000123_02_01/045.png", "deeplesion", "deeplesion/000123_02_01", "folder"),
        (
            "BraTS-GoAT-01507_0000_y_output-slice119.jpg",
            "brats",
            "BraTS-GoAT-01507_0000_y_output",
            "file name without slice number",
        ),
        ("ISPY1_1001_0001.nii_45.png", None, "ISPY1_1001_0001.nii", "file name without slice number"),
        (None, None, "8031efe0-1b5c-11ef-8929-000066532cad", "row id"),
    ],
)
def test_split_key_finds_the_patient_in_real_names(name, source, key, rule):
    row_id = name or "8031efe0-1b5c-11ef-8929-000066532cad"
    assert split_key(name, source, row_id) == (key, rule)


def _slices_of(patient: int) -> list[tuple[str, str]]:
    """(name, source) of one patient's slices over several studies, series, scans and masks."""
    deeplesion = [
        DEEPLESION.format(patient=f"{patient:06d}", study=f"{study:02d}", slice=f"{s:03d}")
        for study in (1, 2, 7)
        for s in (5, 184)
    ]
    ct_rate = [
        f"{mask}train_{patient}_{scan}_{rec}-liver.nii-{s}.jpg"
        for mask in ("", "seg_")
        for scan in "ab"
        for rec in (1, 2)
        for s in (3, 99)
    ]
    cq500 = [CQ500.format(n=patient, slice=f"{s:06d}") for s in (1, 15, 240)]
    return (
        [(n, "deeplesion") for n in deeplesion]
        + [(n, "ct_rate") for n in ct_rate]
        + [(n, "bhx") for n in cq500]
    )


def test_one_patients_slices_share_a_key_and_patients_spread_over_splits():
    keys = [{split_key(name, source, name).key for name, source in _slices_of(p)} for p in range(200)]
    assert all(len(k) == 3 for k in keys)  # one per data set, whatever the study, scan or slice
    assert len(set().union(*keys)) == 600  # and no two patients share one
    assert {assign_split(key, 0.1, 0.1) for key in set().union(*keys)} == {"train", "val", "test"}


def test_the_same_number_in_two_data_sets_is_two_patients():
    deeplesion = split_key(DEEPLESION.format(patient="000558", study="01", slice="001"), "deeplesion", "")
    ct_rate = split_key("train_558_a_1.nii-1.jpg", "ct_rate", "")
    kits = split_key("case_00558.nii_1.jpg", "kipa22_kits23_cervix", "")
    assert len({deeplesion.key, ct_rate.key, kits.key}) == 3


def test_ct_rate_form_counts_only_under_its_source():
    """``train_12_a_3`` is too generic a form to claim for another source: the fallback keys it."""
    assert split_key("train_12_a_3-7.jpg", "quilt_1m", "").rule == "file name without slice number"
