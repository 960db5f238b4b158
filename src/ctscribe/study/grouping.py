"""Study findings: neighbouring slices that state the same finding, gathered into one with a slice range.

Each slice's description is parsed by the clinical findings parser
(:func:`ctscribe.clinical.findings.parse_findings`); a slice states a finding :class:`FindingKey`
``(region, abnormality, side)`` for each abnormality type it states as present, where the region is
the coarse body part the description names first (chest, abdomen, ...) and the side is left, right,
bilateral (both named) or None. A **study finding** is a maximal run of described slices, in series
order, that all state the same key: a described slice that does not state it ends the run, while a
slice that was not read (``every:K``) or failed does not.

The **key slice** of a finding is the slice of its run whose box for the finding is largest (in the
slice's pixels): for a lesion, where its section is widest. Ties go to the slice nearest the run's
middle; a run without boxes takes its middle slice. A slice's box for a finding is its first box whose
phrase names the abnormality, else its first box when the slice states one finding only.

What grouping cannot tell: a slice model does not see across slices, so two lesions of the same kind on
the same side in touching slice ranges become one finding, one lesion that a slice in its middle fails
to mention becomes two, and nothing checks that the boxes of a run lie over one another.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctscribe.clinical.findings import parse_findings


@dataclass(frozen=True, order=True)
class FindingKey:
    region: str | None
    abnormality: str
    side: str | None

    def label(self) -> str:
        """``nodule, chest, right``: how the report and the strip plot name it."""
        return ", ".join(part for part in (self.abnormality, self.region, self.side) if part)


@dataclass(frozen=True)
class StudyFinding:
    key: FindingKey
    first: int
    last: int
    key_slice: int
    box: list[int] | None  # inclusive pixels [x0, y0, x1, y1] in the key slice's windowed image
    slices_stating: int  # described slices in the run

    def as_dict(self) -> dict:
        return {
            "region": self.key.region,
            "abnormality": self.key.abnormality,
            "side": self.key.side,
            "slices": [self.first, self.last],
            "key_slice": self.key_slice,
            "box": self.box,
            "slices_stating": self.slices_stating,
        }


def _side(sides: frozenset[str]) -> str | None:
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return next(iter(sides), None)


def stated(text: str) -> list[FindingKey]:
    """The finding keys one slice's description states, sorted."""
    findings = parse_findings(text)
    side = _side(findings.laterality)
    return sorted(FindingKey(findings.body_part, name, side) for name in findings.abnormalities)


def _box(record: dict, key: FindingKey, keys: list[FindingKey]) -> list[int] | None:
    boxes = [box for box in record.get("boxes") or [] if box.get("box_pixels")]
    for box in boxes:
        if key.abnormality in parse_findings(box.get("phrase") or "").abnormalities:
            return box["box_pixels"]
    return boxes[0]["box_pixels"] if boxes and len(keys) == 1 else None


def _area(box: list[int] | None) -> int:
    return -1 if box is None else (box[2] - box[0] + 1) * (box[3] - box[1] + 1)


def _finding(key: FindingKey, run: list[tuple[int, list[int] | None]]) -> StudyFinding:
    middle = (run[0][0] + run[-1][0]) / 2
    index, box = max(run, key=lambda item: (_area(item[1]), -abs(item[0] - middle)))
    return StudyFinding(key, run[0][0], run[-1][0], index, box, len(run))


def group_findings(records: list[dict]) -> list[StudyFinding]:
    """Study findings of one series from its ok slice records (``slice``, ``text``, ``boxes``), sorted
    by first slice; see the module docstring."""
    ordered = sorted(records, key=lambda record: record["slice"])
    keyed = [(record, stated(record["text"])) for record in ordered]
    runs: dict[FindingKey, list[tuple[int, list[int] | None]]] = {}
    findings: list[StudyFinding] = []
    for record, keys in keyed:
        for key in [key for key in runs if key not in keys]:
            findings.append(_finding(key, runs.pop(key)))
        for key in keys:
            runs.setdefault(key, []).append((record["slice"], _box(record, key, keys)))
    findings += [_finding(key, run) for key, run in runs.items()]
    return sorted(findings, key=lambda finding: (finding.first, finding.key))
