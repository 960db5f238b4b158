"""Follow-up answering (the model's own history, resumable) and closed/open dialogue scores."""

import json
import math
from types import SimpleNamespace

import pytest
from PIL import Image

from ctscribe.conversation.boxes import GridBox, format_box
from ctscribe.evaluate.dialogue import answer_followups, followup_records, score_dialogues, yes_or_no
from ctscribe.evaluate.scores import read_predictions
from ctscribe.generate.engine import GenerationResult


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),
        ("yes, on the left", "yes"),
        ("No.", "no"),
        ("Not on this slice.", "no"),
        ("None", None),
        ("是。", "yes"),
        ("是的", "yes"),
        ("有。", "yes"),
        ("不是。", "no"),
        ("否", "no"),
        ("没有。", "no"),
        ("无异常", "no"),
        ("The chest.", None),
        ("", None),
        ("  “Yes”", "yes"),
    ],
)
def test_yes_or_no_reads_english_and_chinese_answers(text, expected):
    assert yes_or_no(text) == expected


def _turn(kind, topic, reference, prediction, expected=None):
    return {
        "kind": kind,
        "topic": topic,
        "expected": expected,
        "reference": reference,
        "prediction": prediction,
    }


def test_scores_count_closed_hits_and_open_key_terms():
    rows = [
        {
            "id": "a",
            "turns": [
                _turn("open", "organ", "CT of the chest.", "CT of the chest."),  # 2/2 terms (CT, chest)
                _turn("open", "abnormality", "A lesion is present on the left side.", "A lesion."),  # 1/2
                _turn("closed", "region", "Yes.", "Yes.", "yes"),
                _turn("closed", "side", "No.", "Yes.", "no"),
            ],
        },
        {
            "id": "b",
            "turns": [
                _turn("open", "effect", "It may grow.", "It may grow."),  # no key terms: not scored
                _turn("closed", "abnormal", "没有。", "没有", "no"),
                _turn("closed", "modality", "Yes.", "The chest.", "yes"),  # unreadable: wrong
            ],
        },
    ]
    block = score_dialogues(rows)
    assert block["records"] == 2 and block["closed_n"] == 4 and block["closed_expected_yes"] == 2
    assert block["closed_acc"] == 0.5 and block["closed_unreadable"] == 1
    assert block["closed_acc_by_topic"]["region"] == {"n": 1, "acc": 1.0}
    assert block["closed_acc_by_topic"]["side"] == {"n": 1, "acc": 0.0}
    assert block["open_n"] == 2 and math.isclose(block["open_recall"], 0.75)
    low, high = block["ci95"]["closed_acc"]
    assert 0 <= low <= 0.5 <= high <= 1


def test_scores_of_no_dialogue_are_empty_not_zero():
    block = score_dialogues([])
    assert block["closed_acc"] is None and block["open_recall"] is None and block["ci95"] == {}
    assert "boxes" not in block


def test_a_follow_up_answered_with_a_box_is_scored_by_iou():
    where = format_box(GridBox(100, 100, 500, 500), "The region of interest")
    guess = format_box(GridBox(100, 100, 500, 300), "The region of interest")  # IoU 0.5
    reference = f"{where} is in the left lung."
    rows = [{"id": "a", "turns": [_turn("open", "roi_box", reference, f"{guess} is in the left lung.")]}]
    block = score_dialogues(rows)
    assert block["boxes"]["n"] == 1 and block["boxes"]["mean_iou"] == 0.5
    assert block["open_recall"] == 1.0  # lung and left, read from the words around the box


class EchoEngine:
    """Answers each request with a text naming what it saw; records every request."""

    name = "echo"

    def __init__(self):
        self.requests = []

    def prepare(self, image):
        """The image as it is, where the engine's ``prepare`` gives a PreparedImage: only ``.image``
        is read by the dialogue."""
        return SimpleNamespace(image=Image.open(image).convert("RGB"))

    def generate(self, requests):
        self.requests += requests
        return [GenerationResult(f"answer {len(r.messages) // 2}", 10, 2, "stop", 0.0) for r in requests]


@pytest.fixture
def split(tmp_path):
    """A test split: two dialogue records (3 and 1 follow-ups) and a plain record."""
    (tmp_path / "images").mkdir()
    records = []
    for name, followups in (("a", 3), ("b", 1), ("c", 0)):
        Image.new("RGB", (32, 32)).save(tmp_path / "images" / f"{name}.png")
        messages = [
            {"role": "user", "content": "<image>Describe this CT image."},
            {"role": "assistant", "content": f"REFERENCE DESCRIPTION {name}"},
        ]
        meta = [{"kind": "description", "topic": "description", "expected": None}]
        for k in range(followups):
            messages += [{"role": "user", "content": f"Q{k}?"}, {"role": "assistant", "content": "Yes."}]
            meta.append({"kind": "closed", "topic": "region", "expected": "yes"})
        record = {"id": name, "messages": messages, "images": [f"images/{name}.png"]}
        if followups:
            record["dialogue"] = meta
        records.append(record)
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    predictions = [{"id": n, "status": "ok", "text": f"MODEL DESCRIPTION {n}"} for n in ("a", "b", "c")]
    return path, predictions


def test_followups_are_asked_after_the_models_own_answers_and_resume(split, tmp_path):
    data, predictions = split
    assert [r["id"] for r in followup_records(data)] == ["a", "b"]
    engine = EchoEngine()
    out = tmp_path / "dialogue_predictions.jsonl"
    assert answer_followups(engine, data, predictions, out, batch_size=8, show_progress=False) == 2
    assert len(engine.requests) == 4  # 3 follow-ups of a, 1 of b: the plain record asks nothing
    last = engine.requests[3]  # a's third question: turn positions are batched across records
    texts = [
        m["content"] if isinstance(m["content"], str) else m["content"][-1]["text"] for m in last.messages
    ]
    assert texts == [
        "Describe this CT image.",
        "MODEL DESCRIPTION a",
        "Q0?",
        "answer 1",
        "Q1?",
        "answer 2",
        "Q2?",
    ]
    assert not any("REFERENCE" in text for text in texts) and len(last.images) == 1
    rows = {row["id"]: row for row in read_predictions(out)}
    assert [t["prediction"] for t in rows["a"]["turns"]] == ["answer 1", "answer 2", "answer 3"]
    assert rows["b"]["turns"][0] == {
        "kind": "closed",
        "topic": "region",
        "expected": "yes",
        "question": "Q0?",
        "reference": "Yes.",
        "prediction": "answer 1",
    }
    # a rerun (after a kill that tore the last line) answers only what is missing
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:20])
    again = EchoEngine()
    assert answer_followups(again, data, predictions, out, show_progress=False) == 1
    assert {row["id"] for row in read_predictions(out)} == {"a", "b"}
    assert answer_followups(EchoEngine(), data, predictions, out, show_progress=False) == 0


def test_a_record_whose_description_failed_is_not_asked(split, tmp_path):
    data, predictions = split
    predictions[0] = {"id": "a", "status": "error", "error": "bad image"}
    engine = EchoEngine()
    answer_followups(engine, data, predictions, tmp_path / "d.jsonl", show_progress=False)
    assert len(engine.requests) == 1
