"""The findings lexicons: unique canonical names, and each one listed in docs/EVALUATION.md."""

from __future__ import annotations

from pathlib import Path

from ctscribe.clinical.lexicons import ABNORMALITIES, LATERALITY, REGIONS


def test_lexicons_are_well_formed_and_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "EVALUATION.md").read_text()
    for lexicon in (REGIONS, ABNORMALITIES, LATERALITY):
        names = [t.canonical for t in lexicon]
        assert len(names) == len(set(names))
        for term in lexicon:
            assert term.english and f"`{term.canonical}`" in doc, term.canonical
    sizes = f"{len(REGIONS)} regions ({sum(len(t.english) + len(t.chinese) for t in REGIONS)} entries)"
    assert sizes in doc
    assert f"{len(ABNORMALITIES)} abnormality types" in doc
