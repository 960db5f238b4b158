"""``ctscribe translate``: a prepared data set with Chinese (or bilingual) answers.

MedTrinity's captions are English. Chinese versions come from either

- **a server**: any OpenAI-compatible chat completions API (a user's own vLLM or Qwen server, or
  ``ctscribe serve``). Each distinct caption is sent once; answers are cached in
  ``OUT/translations.jsonl``, keyed by the caption's SHA-256 and appended (and fsynced) batch by
  batch, so a killed run loses at most one batch and a rerun asks only for what is missing (a torn
  last line is skipped). A failed request, an empty answer, an answer cut off at ``max_tokens`` or
  one that is not mostly Chinese is not cached: it is counted with its reason in ``stats.json`` and
  asked again by the next run;
- **a file** (``--captions-zh``): JSONL or CSV with ``id`` and ``caption_zh``, joined by record id.

The output is a prepared data set in the input's layout (``train.json``, ``val.json``,
``test.json``, ``dataset_info.json``, ``stats.json``, images hard-linked), with the same records and
splits: ``zh`` answers every record in Chinese, ``both`` answers each record in Chinese or English
(half each, by a hash of its id) so the model learns both and no image appears twice. Prompts ask
for the answer's language (:data:`ctscribe.conversation.prompts.PROMPTS`); records prepared with
``--dialogue`` get their follow-up turns rebuilt from the Chinese caption. A grounded record's box
(:mod:`ctscribe.prepare.grounding`) is taken out before its caption is translated and put back into
the Chinese one, after its 感兴趣区域 phrase or as a closing sentence. A record without a Chinese
caption is left out and counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from ctscribe.conversation.boxes import GridBox
from ctscribe.conversation.records import record_text
from ctscribe.prepare.captions import clean_caption
from ctscribe.prepare.grounding import unground
from ctscribe.prepare.options import TranslateOptions
from ctscribe.prepare.records import dataset_info, sft_record
from ctscribe.prepare.run import (
    JsonArrayWriter,
    atomic_write_text,
    count_turns,
    dialogue_stats,
    link_or_copy,
)
from ctscribe.prepare.splits import SPLITS, read_split
from ctscribe.text import is_chinese

CACHE = "translations.jsonl"
SYSTEM_PROMPT = "You are a careful medical translator from English to Simplified Chinese."
REQUEST = (
    "Translate this CT image description into Simplified Chinese. Keep every finding, location, "
    "measurement, negation and hedge; add nothing and leave nothing out. Reply with the translation "
    "only.\n\n{caption}"
)


def caption_key(caption: str) -> str:
    """The cache key of a caption: equal captions share one translation."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def api_root(base_url: str) -> str:
    """The API root the OpenAI client needs: ``http://host:8000`` becomes ``http://host:8000/v1``."""
    url = base_url.rstrip("/")
    return url + "/v1" if urlparse(url).path in ("", "/") else url


class TranslationCache:
    """Translations by caption key, in an append-only JSONL file that survives kills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry["zh"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill: its caption is asked again

    def __contains__(self, caption: str) -> bool:
        return caption_key(caption) in self.entries

    def get(self, caption: str) -> str | None:
        return self.entries.get(caption_key(caption))

    def add(self, items: Sequence[tuple[str, str]], model: str) -> None:
        """Append ``(caption, translation)`` pairs and fsync: a batch is either kept or asked again."""
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb+") as handle:  # a torn last line must not swallow the next entry
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        with self.path.open("a", encoding="utf-8") as handle:
            for caption, zh in items:
                entry = {"key": caption_key(caption), "zh": zh, "model": model, "caption": caption}
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self.entries[entry["key"]] = zh
            handle.flush()
            os.fsync(handle.fileno())


def check_translation(text: str, finish_reason: str, check: bool = True) -> str | None:
    """Why an answer is no usable translation, or None. ``check`` off accepts any non-empty answer."""
    if not text.strip():
        return "empty answer"
    if check and finish_reason == "length":
        return "cut off at max_tokens"
    if check and not is_chinese(text):
        return "answer is not Chinese"
    return None


@dataclass
class TranslationCounts:
    captions: int = 0  # distinct captions that needed a translation
    cached: int = 0  # of them, already in the cache
    requested: int = 0  # sent to the server in this run
    translated: int = 0  # of the requests, answered with a usable translation
    failed: Counter = field(default_factory=Counter)  # reason -> count


def translate_captions(
    captions: Sequence[str],
    cache: TranslationCache,
    engine,
    options: TranslateOptions,
    *,
    show_progress: bool = True,
) -> TranslationCounts:
    """Ask ``engine`` (an :class:`~ctscribe.generate.openai_engine.OpenAIEngine`) for every caption
    not in ``cache`` yet; usable answers go into the cache, the others are counted by reason."""
    from ctscribe.generate.engine import GenerationRequest

    distinct = list(dict.fromkeys(captions))
    pending = [caption for caption in distinct if caption not in cache]
    counts = TranslationCounts(captions=len(distinct), cached=len(distinct) - len(pending))
    with tqdm(total=len(pending), desc="translate", unit="caption", disable=not show_progress) as progress:
        for start in range(0, len(pending), options.batch_size):
            batch = pending[start : start + options.batch_size]
            requests = [
                GenerationRequest(
                    [
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": REQUEST.format(caption=caption)},
                    ],
                    max_new_tokens=options.max_tokens,
                )
                for caption in batch
            ]
            good = []
            for caption, result in zip(batch, engine.generate(requests, return_exceptions=True), strict=True):
                if isinstance(result, Exception):
                    reason = f"request failed: {type(result).__name__}"
                else:
                    reason = check_translation(result.text, result.finish_reason, options.check_answers)
                if reason is None:
                    good.append((caption, result.text.strip()))
                else:
                    counts.failed[reason] += 1
            cache.add(good, engine.name)
            counts.requested += len(batch)
            counts.translated += len(good)
            progress.update(len(batch))
    return counts


def read_captions_zh(path: Path) -> dict[str, str]:
    """``id -> caption_zh`` from a JSONL or CSV file with those two fields; blank captions skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"--captions-zh {path}: no such file")
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise ValueError(f"{path}:{number} is not a JSON object; expected JSONL or .csv") from None
    mapping = {}
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "id" not in row or "caption_zh" not in row:
            raise ValueError(f"{path}: row {number} lacks the fields id and caption_zh")
        text = str(row["caption_zh"] or "").strip()
        if text:
            mapping[str(row["id"])] = text
    return mapping


def described(record: dict) -> tuple[str, GridBox | None]:
    """The caption of a prepared record (its first answer) and the box that grounds it, if any."""
    return unground(record_text(record, "assistant") or "")


def description(record: dict) -> str:
    """The caption of a prepared record, without its grounding: what is translated."""
    return described(record)[0]


def write_translated(
    source: Path,
    out: Path,
    splits: dict[str, list[dict]],
    chinese: Callable[[dict], str | None],
    options: TranslateOptions,
) -> dict:
    """Write the output data set; ``chinese(record)`` is a record's Chinese caption or None."""
    skipped: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    turns: Counter[tuple[str, str]] = Counter()
    writers = {split: JsonArrayWriter(out / f"{split}.json") for split in SPLITS}
    try:
        for split, records in splits.items():
            for record in records:
                answer_lang = options.answer_language(record["id"])
                caption, box = described(record)
                if not caption:  # a hand-edited record without an answer: nothing to translate
                    skipped["no_answer"] += 1
                    continue
                if answer_lang == "zh":
                    caption = clean_caption(chinese(record) or "")
                    if not caption:
                        skipped["no_translation"] += 1
                        continue
                image = record["images"][0]
                link_or_copy(source / image, out / image)
                sft = sft_record(
                    record["id"],
                    image,
                    caption,
                    split,
                    lang=options.lang,
                    answer_lang=answer_lang,
                    dialogue="dialogue" in record,
                    box=box,
                )
                count_turns(sft, turns)
                writers[split].write(sft)
                languages[answer_lang] += 1
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    stats = {
        "source": str(source),
        "kept": sum(languages.values()),
        "skipped": dict(skipped),
        "splits": {split: writer.count for split, writer in writers.items()},
        "answers": dict(languages),
        "options": asdict(options),
    }
    if turns:
        stats["dialogue"] = dialogue_stats(turns)
    atomic_write_text(out / "dataset_info.json", json.dumps(dataset_info(options.name), indent=2))
    return stats


def run_translate(
    source: Path,
    out: Path,
    options: TranslateOptions,
    *,
    base_url: str | None = None,
    model: str | None = None,
    captions_zh: Path | None = None,
    show_progress: bool = True,
) -> dict:
    """Translate (or join) the captions of the prepared data set ``source`` into ``out``; the stats."""
    source, out = Path(source), Path(out)
    if (base_url is None) == (captions_zh is None):
        raise ValueError("give either --base-url (a server translates) or --captions-zh FILE (join by id)")
    if out.resolve() == source.resolve():
        raise ValueError("--out must be a new folder, not the --data folder")
    splits = {split: read_split(source / f"{split}.json") for split in SPLITS}
    out.mkdir(parents=True, exist_ok=True)
    translation: dict = {}
    if captions_zh is not None:
        joined = read_captions_zh(captions_zh)
        translation = {"captions_zh": str(captions_zh), "ids": len(joined)}

        def chinese(record: dict) -> str | None:
            return joined.get(str(record["id"]))
    else:
        from ctscribe.generate.openai_engine import OpenAIEngine

        # verify=False: a server that is down is counted per caption, like any other failed request
        engine = OpenAIEngine(api_root(base_url), model, concurrency=options.batch_size, verify=False)
        cache = TranslationCache(out / CACHE)
        wanted = [
            description(record)
            for records in splits.values()
            for record in records
            if options.answer_language(record["id"]) == "zh"
        ]
        counts = translate_captions(
            wanted,
            cache,
            engine,
            options,
            show_progress=show_progress,
        )
        translation = {"server": base_url, "model": engine.name, **asdict(counts)}
        translation["failed"] = dict(counts.failed.most_common())

        def chinese(record: dict) -> str | None:
            return cache.get(description(record))

    stats = write_translated(source, out, splits, chinese, options)
    stats["translation"] = translation
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False))
    return stats
