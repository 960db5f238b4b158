"""Dialogue evaluation: the model answers a test record's follow-up questions; closed and open scores.

A record prepared with ``--dialogue`` holds the description prompt, then follow-up questions with
reference answers and, in its ``dialogue`` field, each turn's kind and (closed questions) the
expected yes/no. The model is asked the follow-ups as a clinician would ask them: after **its own**
description (from ``predictions.jsonl``) and its own earlier answers, never the reference's, which
would hand it the answers. Records are answered in batches, one turn position at a time, and each
finished record is appended to ``dialogue_predictions.jsonl``, so a killed evaluation resumes.

Scores (``metrics.json``'s ``dialogue`` block), with the same bootstrap intervals as the rest:

- ``closed_acc``: share of closed questions whose answer, read as yes or no, equals the expected one
  (like VQA-RAD's "closed" accuracy); an answer that is neither counts as wrong. Chance is 0.5: the
  prepared questions are balanced. ``closed_acc_by_topic`` breaks it down (modality questions of a
  CT-only set can be answered without the image; the others cannot).
- ``open_recall``: per open question, the share of the reference answer's key terms (the findings
  lexicons' modality, regions, sides, abnormality types with their polarity) that the answer names;
  the mean over open questions whose reference names any.
- ``boxes``: box IoU (:mod:`ctscribe.evaluate.grounding`) over the questions whose reference answer
  holds a box (a grounded split's "Where is the region of interest?"); absent when none does.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctscribe.atomic import atomic_write_text
from ctscribe.clinical.findings import key_terms
from ctscribe.conversation.boxes import strip_grounding
from ctscribe.conversation.records import record_prompt, user_message
from ctscribe.ct.images import BadImageError
from ctscribe.evaluate.bootstrap import bootstrap_ci, json_number
from ctscribe.evaluate.grounding import score_boxes
from ctscribe.evaluate.scores import model_text, read_predictions
from ctscribe.generate.engine import GenerationBackend, GenerationRequest
from ctscribe.generate.options import GenerateOptions
from ctscribe.prepare.splits import read_split

_YES = re.compile(r"^(?:yes|yeah|correct|true)\b|^(?:是|对|有|正确)", re.IGNORECASE)
_NO = re.compile(r"^(?:no|not|false|incorrect)\b|^(?:不是|否|没有|无|不|未|非)", re.IGNORECASE)


def yes_or_no(text: str) -> str | None:
    """``yes``, ``no`` or None for an answer, from how it starts ("Yes.", "No, …", 是, 不是, 有, 没有)."""
    start = text.strip().lstrip("\"'\u201c\u2018([\u300c").strip()
    if _NO.match(start):  # before yes: 不是 and 没有 start with no "yes" prefix, 是 is inside 不是
        return "no"
    if _YES.match(start):
        return "yes"
    return None


def followup_records(data: Path, limit: int | None = None) -> list[dict]:
    """The split's records (the first ``limit``, as predict takes them) that carry follow-up turns."""
    try:
        records = read_split(data)
    except (OSError, ValueError):
        return []  # predict reports an unreadable split as its error record
    return [r for r in records[:limit] if isinstance(r, dict) and len(r.get("dialogue") or []) > 1]


def _turns(record: dict) -> list[tuple[dict, str, str]]:
    """(meta, question, reference) of each follow-up: message pairs after the description's."""
    messages = record["messages"]
    return [
        (meta, messages[2 * k]["content"], messages[2 * k + 1]["content"])
        for k, meta in enumerate(record["dialogue"])
        if k > 0
    ]


def answer_followups(
    engine: GenerationBackend,
    data: Path,
    predictions: Sequence[dict],
    out: Path,
    *,
    limit: int | None = None,
    batch_size: int = GenerateOptions.batch_size,
    max_new_tokens: int = GenerateOptions.max_new_tokens,
    show_progress: bool = True,
) -> int:
    """Answer the follow-ups of every dialogue record whose description the model wrote; append one
    line per record to ``out``. Returns the number of records answered in this call."""
    described = {p["id"]: p for p in predictions if p.get("status") == "ok" and p.get("id") is not None}
    rows = read_predictions(out) if out.exists() else []
    # Rewritten without a line torn by a kill, so that appending starts on a line of its own.
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    done = {row["id"] for row in rows}
    todo = [r for r in followup_records(data, limit) if r["id"] in described and r["id"] not in done]
    answered = 0
    with (
        out.open("a", encoding="utf-8") as sink,
        tqdm(total=len(todo), desc="dialogue", unit="record", disable=not show_progress) as progress,
    ):
        for start in range(0, len(todo), batch_size):
            batch = []
            for record in todo[start : start + batch_size]:
                try:
                    image = engine.prepare(data.parent / record["images"][0]).image
                except BadImageError:
                    continue  # its description failed too; predictions.jsonl names the reason
                history = [
                    user_message(record_prompt(record)),
                    {"role": "assistant", "content": model_text(described[record["id"]])},
                ]
                batch.append((record, _turns(record), image, history, []))
            depth = max((len(turns) for _, turns, *_ in batch), default=0)
            for position in range(depth):
                asking = [item for item in batch if position < len(item[1])]
                requests = []
                for _, turns, image, history, _ in asking:
                    history.append({"role": "user", "content": turns[position][1]})
                    requests.append(GenerationRequest(list(history), [image], max_new_tokens))
                for (*_, history, answers), result in zip(asking, engine.generate(requests), strict=True):
                    history.append({"role": "assistant", "content": result.text})
                    answers.append(result.text)
            for record, turns, _, _, answers in batch:
                scored = [
                    {**meta, "question": question, "reference": reference, "prediction": answer}
                    for (meta, question, reference), answer in zip(turns, answers, strict=True)
                ]
                sink.write(json.dumps({"id": record["id"], "turns": scored}, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            answered += len(batch)
            progress.update(len(todo[start : start + batch_size]))
    return answered


def score_dialogues(rows: Sequence[dict], seed: int = 0) -> dict:
    """metrics.json's ``dialogue`` block from the rows of ``dialogue_predictions.jsonl``."""
    turns = [turn for row in rows for turn in row["turns"]]
    closed = [t for t in turns if t["kind"] == "closed"]
    correct = np.array([float(yes_or_no(t["prediction"]) == t["expected"]) for t in closed])
    recalls = []
    for turn in (t for t in turns if t["kind"] == "open"):
        expected = key_terms(strip_grounding(turn["reference"]))
        if expected:
            recalls.append(len(expected & key_terms(strip_grounding(turn["prediction"]))) / len(expected))
    recall = np.array(recalls)
    block: dict = {
        "records": len(rows),
        "closed_n": len(closed),
        "closed_expected_yes": sum(t["expected"] == "yes" for t in closed),
        "closed_acc": json_number(correct.mean()) if closed else None,
        "closed_unreadable": sum(yes_or_no(t["prediction"]) is None for t in closed),
        "closed_acc_by_topic": {},
        "open_n": len(recalls),
        "open_recall": json_number(recall.mean()) if recalls else None,
        "ci95": {},
    }
    for topic in sorted({t["topic"] for t in closed}):
        hits = [c for t, c in zip(closed, correct, strict=True) if t["topic"] == topic]
        block["closed_acc_by_topic"][topic] = {"n": len(hits), "acc": json_number(float(np.mean(hits)))}
    if closed:
        block["ci95"]["closed_acc"] = [json_number(v) for v in bootstrap_ci(correct, seed=seed)]
    if recalls:
        block["ci95"]["open_recall"] = [json_number(v) for v in bootstrap_ci(recall, seed=seed)]
    boxes = score_boxes([t["prediction"] for t in turns], [t["reference"] for t in turns], seed)
    if boxes["n"]:  # a grounded split asks where the region of interest is
        block["boxes"] = boxes
    return block
