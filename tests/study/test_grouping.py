"""Grouping slice descriptions into study findings: runs, key slices, boxes."""

from __future__ import annotations

from ctscribe.study.grouping import FindingKey, group_findings, stated

NODULE = "CT of the chest. A nodule is seen in the right lung."
CYST = "CT of the abdomen. A cyst is seen in the left kidney."
CLEAR = "CT of the chest. The lungs are clear."


def _record(index: int, text: str, *boxes: tuple[str, list[int]]) -> dict:
    return {"slice": index, "text": text, "boxes": [{"phrase": p, "box_pixels": b} for p, b in boxes]}


def test_a_slice_states_region_abnormality_and_side() -> None:
    assert stated(NODULE) == [FindingKey("chest", "nodule", "right")]
    assert stated("CT of the chest. Nodules in both lungs, left and right.") == [
        FindingKey("chest", "nodule", "bilateral")
    ]
    assert stated(CLEAR) == []


def test_neighbouring_slices_group_and_a_described_slice_without_the_finding_splits() -> None:
    texts = [NODULE, NODULE, CLEAR, NODULE, CYST]
    records = [_record(index, text) for index, text in enumerate(texts)]
    found = [(f.key.abnormality, f.first, f.last, f.slices_stating) for f in group_findings(records)]
    assert found == [("nodule", 0, 1, 2), ("nodule", 3, 3, 1), ("cyst", 4, 4, 1)]


def test_slices_not_read_do_not_split_a_finding() -> None:
    records = [_record(index, NODULE) for index in (0, 3, 6)]  # every:3
    (finding,) = group_findings(records)
    assert (finding.first, finding.last, finding.slices_stating) == (0, 6, 3)


def test_the_key_slice_is_the_largest_box_of_the_finding_and_ties_go_to_the_middle() -> None:
    small, large = [10, 10, 12, 12], [8, 8, 16, 16]
    records = [
        _record(4, NODULE, ("nodule", small)),
        _record(5, NODULE, ("nodule", large)),
        _record(6, NODULE, ("nodule", large)),
        _record(7, NODULE, ("nodule", large)),
        _record(8, NODULE, ("nodule", small)),
    ]
    (finding,) = group_findings(records)
    assert (finding.key_slice, finding.box) == (6, large)
    (unboxed,) = group_findings([_record(index, NODULE) for index in range(10, 15)])
    assert (unboxed.key_slice, unboxed.box) == (12, None)


def test_a_slice_with_two_findings_gives_each_the_box_its_phrase_names() -> None:
    text = "CT of the chest. A nodule in the right lung and a cyst in the right lung."
    record = _record(0, text, ("cyst", [1, 1, 2, 2]), ("nodule", [5, 5, 9, 9]))
    boxes = {f.key.abnormality: f.box for f in group_findings([record])}
    assert boxes == {"nodule": [5, 5, 9, 9], "cyst": [1, 1, 2, 2]}
    # boxes whose phrases name neither finding cannot be told apart: neither finding takes one
    unnamed = _record(0, text, ("", [1, 1, 2, 2]), ("here", [5, 5, 9, 9]))
    assert {f.box for f in group_findings([unnamed])} == {None}
