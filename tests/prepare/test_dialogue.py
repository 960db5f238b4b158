"""Dialogue turns state only what the caption states, checked against the phantom's known facts."""

from collections import Counter

import pytest

from ctscribe.clinical.findings import key_terms
from ctscribe.conversation.boxes import GridBox, parse_boxes
from ctscribe.fixtures.phantom import OTHER_CAPTIONS, generate_rows
from ctscribe.prepare.captions import clean_caption
from ctscribe.prepare.dialogue import QUESTIONS, caption_facts, dialogue_meta, followups

LOCATION_PREFIXES = ("It is located ", "位于")


@pytest.fixture(scope="module")
def phantom_ct():
    """(truth, caption) of 300 phantom rows' usable CT captions: MedTrinity style and short style."""
    rows = []
    for short in (False, True):
        for truth, _, caption in generate_rows(300, seed=3, short=short):
            text = clean_caption(caption)
            if truth.modality == "CT" and text:
                rows.append((truth, text))
    return rows


def _quoted(answer: str, caption: str) -> bool:
    """An open answer is the caption's own words: a piece of it, or a located-phrase in a frame."""
    for prefix in LOCATION_PREFIXES:
        if answer.startswith(prefix):
            answer = answer[len(prefix) :]
    return answer.rstrip(".。") in caption


def test_turns_state_only_facts_the_caption_holds_and_the_truth_confirms(phantom_ct):
    asked = Counter()
    for index, (truth, caption) in enumerate(phantom_ct):
        for lang in ("en", "zh"):
            for turn in followups(f"{truth.id}:{lang}", caption, lang):
                asked[turn.topic] += 1
                if turn.kind == "open":
                    assert _quoted(turn.answer, caption), (turn, caption)
                    assert key_terms(turn.answer) <= key_terms(caption), (turn, caption)
                    continue
                said = {"Yes.": "yes", "No.": "no"}[turn.answer]  # English captions: English answers
                assert said == turn.expected
                if turn.topic == "modality":
                    assert (turn.asked == "CT") == (said == "yes")
                elif turn.topic == "region":
                    assert (turn.asked == truth.region) == (said == "yes"), (turn, truth)
                elif turn.topic == "side":
                    assert truth.lesion and (turn.asked == truth.side) == (said == "yes"), (turn, truth)
                elif turn.topic == "abnormal":
                    assert truth.lesion == (said == "yes"), (turn, caption)
                else:
                    assert turn.topic == "normal" and truth.lesion == (said == "no"), (turn, caption)
        assert index < 1000
    # every kind of follow-up occurs; location and effect only in the MedTrinity-style captions
    assert set(asked) == {
        "organ",
        "abnormality",
        "location",
        "effect",
        "modality",
        "region",
        "side",
        "abnormal",
        "normal",
    }


def test_closed_answers_are_balanced_overall_and_per_topic(phantom_ct):
    answers = Counter()
    for truth, caption in phantom_ct:
        for turn in followups(truth.id, caption, "en"):
            if turn.kind == "closed":
                topic = "presence" if turn.topic in ("abnormal", "normal") else turn.topic
                answers[topic, turn.expected] += 1
                answers["all", turn.expected] += 1
    for topic in ("all", "modality", "region", "side", "presence"):
        yes, no = answers[topic, "yes"], answers[topic, "no"]
        assert yes + no >= 100, topic
        assert 0.4 <= yes / (yes + no) <= 0.6, (topic, yes, no)


def test_no_region_question_is_asked_about_a_part_that_is_only_ever_no(phantom_ct):
    """A body part asked only in "no" questions would give the answer away without the image."""
    asked = Counter()
    for truth, caption in phantom_ct:
        for turn in followups(truth.id, caption, "en"):
            if turn.topic == "region":
                asked[turn.asked, turn.expected] += 1
    for part in {part for part, _ in asked}:
        assert asked[part, "yes"] > 0, (part, asked)


def test_nothing_is_asked_about_what_the_caption_does_not_say():
    # no normal/abnormal statement, no side: no presence question, no side question
    caption = "The image is a CT scan of the abdomen, showing the liver and the spleen."
    topics = {turn.topic for turn in followups("a", caption, "en")}
    assert topics == {"organ", "modality", "region"}
    # a finding on the left whose effect sentence names the right side: the side is not exclusive
    caption = (
        "CT scan of the brain. The region of interest, located on the left side of the image, shows a "
        "hemorrhage. This abnormality may cause a shift toward the right."
    )
    for key in map(str, range(20)):
        assert "side" not in {turn.topic for turn in followups(key, caption, "en")}
    # an MRI caption that mentions a prior CT is never asked "is this a CT?" with the answer no
    mri = OTHER_CAPTIONS["MRI"][0]
    for key in map(str, range(40)):
        for turn in followups(key, mri, "en"):
            if turn.topic == "modality":
                assert turn.asked != "CT" or turn.expected == "yes"
                assert (turn.asked == "MRI") == (turn.expected == "yes")


def test_a_medtrinity_caption_splits_into_its_three_parts(real_caption):
    facts = caption_facts(real_caption)
    assert facts.anatomy == "The image is a non-contrast computed tomography (CT) scan of the brain."
    assert facts.finding.startswith("The region of interest, located centrally")
    assert facts.location == "centrally and in the middle of the image"
    assert facts.effect.startswith("This abnormality is likely affecting")
    assert (facts.modality, facts.body_part, facts.side, facts.abnormal) == ("CT", "head", None, True)


def test_chinese_caption_gets_chinese_answers_and_the_question_language_is_the_rows():
    caption = (
        "这是一张颅脑CT平扫图像。感兴趣区位于图像左侧，可见高密度影，提示脑出血。"
        "该异常可能对周围脑组织产生占位效应。"
    )
    turns = followups("k", caption, "en")
    assert all(turn.question.isascii() for turn in turns)
    by_topic = {turn.topic: turn for turn in turns}
    assert by_topic["organ"].answer == "这是一张颅脑CT平扫图像。"
    assert by_topic["location"].answer == "位于图像左侧。"
    assert by_topic["effect"].answer == "该异常可能对周围脑组织产生占位效应。"
    for turn in turns:
        if turn.kind == "closed":
            assert turn.answer in ("是。", "不是。", "有。", "没有。")
    zh_questions = followups("k", caption, "zh")
    assert all(not turn.question.isascii() for turn in zh_questions)
    assert [t.answer for t in zh_questions] == [t.answer for t in turns]


def test_same_row_same_dialogue_and_wording_varies_between_rows(real_caption):
    assert followups("row-1", real_caption, "en") == followups("row-1", real_caption, "en")
    questions = {turn.question for key in map(str, range(30)) for turn in followups(key, real_caption, "en")}
    assert len(questions) > 15


def test_dialogue_meta_lists_each_pair_description_first(real_caption):
    turns = followups("row-1", real_caption, "en")
    meta = dialogue_meta(turns)
    assert meta[0] == {"kind": "description", "topic": "description", "expected": None}
    assert [m["topic"] for m in meta[1:]] == [t.topic for t in turns]
    assert all((m["expected"] is None) == (m["kind"] == "open") for m in meta[1:])


@pytest.mark.parametrize(
    ("caption", "language"),
    [
        ("CT of the chest. A lesion is present on the left side.", "en"),
        ("这是一张颅脑CT平扫图像。感兴趣区位于图像左侧，可见高密度影，提示脑出血。", "zh"),
    ],
)
def test_a_grounded_row_is_asked_where_its_region_of_interest_is(real_caption, caption, language):
    box = GridBox(100, 200, 300, 400)
    for text in (caption, real_caption):
        plain, grounded = followups("k", text, "en"), followups("k", text, "en", box)
        asked = [turn for turn in grounded if turn.topic == "roi_box"]
        assert [turn for turn in grounded if turn.topic != "roi_box"] == plain  # nothing else changes
        assert len(asked) == 1 and asked[0].kind == "open" and asked[0].question in QUESTIONS["roi_box"]["en"]
        assert [(g.phrase, g.box) for g in parse_boxes(asked[0].answer)] == [
            ("感兴趣区域" if text == caption and language == "zh" else "The region of interest", box)
        ]
    topics = [turn.topic for turn in followups("k", real_caption, "zh", box)]
    assert topics.index("roi_box") == topics.index("location") + 1
    assert QUESTIONS["roi_box"]["en"][0] == "Where is the region of interest?"
    assert QUESTIONS["roi_box"]["zh"][0] == "感兴趣区域在哪里？"
