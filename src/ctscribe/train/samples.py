"""Supervised fine-tuning samples: token ids, the loss mask and the image features.

A record is what `ctscribe prepare` writes (``ctscribe.conversation.records``): ``messages`` whose
user turns hold ``<image>`` placeholders, and ``images`` relative to the data folder. It becomes the
exact token sequence the model family's chat template produces (``ctscribe.conversation.template``),
with the loss on assistant tokens only (each answer and its ``<|im_end|>``, in every turn of a
multi-turn conversation). Token ids come from the tokenizer the samples are encoded with.

Lengths are checked before training, from the text and the image sizes alone: a sample whose
image tokens would not fit in ``cutoff_len`` is dropped and counted (truncating through image
tokens is what breaks the model's image-feature/token match), a longer answer is truncated.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from ctscribe.conversation.boxes import messages_to_model, one_frame
from ctscribe.conversation.template import TokenIds, render_conversation
from ctscribe.ct.images import ImageOptions, budget_size, prepare_image
from ctscribe.models.family import ChatTemplate, Family, ImageGrid
from ctscribe.prepare.splits import read_split
from ctscribe.train.packing import pack_rows
from ctscribe.train.split_index import SampleTable, load_split, measure, tokenizer_fingerprint

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Token ids and labels before the image pads are expanded (one pad per image)."""

    input_ids: list[int]
    labels: list[int]


def encode_text(tokenizer, messages: list[dict], template: ChatTemplate) -> Encoded:
    """Tokenise a conversation; a token is labelled when its characters lie inside an answer span."""
    text, spans = render_conversation(messages, template)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        inside = any(s <= start and end <= e for s, e in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return Encoded(list(encoding["input_ids"]), labels)


def expand_image_pads(
    encoded: Encoded, image_tokens: list[int], cutoff_len: int, image_pad_id: int
) -> Encoded | str:
    """Repeat each image's pad to its token count and apply ``cutoff_len``; or the reason to drop."""
    if encoded.input_ids.count(image_pad_id) != len(image_tokens):
        return "images and <image> placeholders differ in number"
    ids: list[int] = []
    labels: list[int] = []
    pads = iter(image_tokens)
    for token_id, label in zip(encoded.input_ids, encoded.labels, strict=True):
        repeat = next(pads) if token_id == image_pad_id else 1
        ids.extend([token_id] * repeat)
        labels.extend([label] * repeat)
    if len(ids) > cutoff_len:
        last_image_token = max((i for i, t in enumerate(ids) if t == image_pad_id), default=-1)
        if last_image_token >= cutoff_len:
            return "image tokens beyond cutoff_len"
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    if all(label == IGNORE_INDEX for label in labels):
        return "no answer tokens within cutoff_len"
    return Encoded(ids, labels)


def check_sample(
    record: dict,
    image_root: Path,
    tokenizer,
    image_pad_id: int,
    image_options: ImageOptions,
    cutoff_len: int,
    family: Family,
) -> tuple[int, int] | str:
    """(tokens, image tokens) of the sample as it will be trained, or the reason it is dropped.

    From the text and the image headers alone (no decode), so a whole split is checked up front.
    ``image_pad_id`` is the tokenizer's (``TokenIds``), read once per split rather than per record.
    """
    try:
        sizes = [model_size(image_root / p, image_options, family.grid) for p in record.get("images", [])]
    except OSError as error:
        return f"unreadable image ({type(error).__name__})"
    tokens = [family.grid.tokens(width, height) for width, height in sizes]
    # boxes in the family's convention, about the image at the size the model sees it
    messages = messages_to_model(record["messages"], family.grounding, one_frame(sizes))
    result = expand_image_pads(
        encode_text(tokenizer, messages, family.template), tokens, cutoff_len, image_pad_id
    )
    return result if isinstance(result, str) else (len(result.input_ids), sum(tokens))


def model_size(path: Path, options: ImageOptions, grid: ImageGrid) -> tuple[int, int]:
    """(width, height) the model sees the image at ``path`` at within the budget, from its header only."""
    with Image.open(path) as image:  # header only: no decode
        width, height = image.size
    return budget_size(width, height, options.max_pixels, options.min_pixels, grid)


@dataclass
class SFTDataset(torch.utils.data.Dataset):
    """Prepared records, length-checked up front, loaded (image and all) one at a time.

    Checking up front means a dropped sample is known and counted before the first step, and the
    sampler's order, hence a resumed run's order, never depends on which samples fail. The check
    also yields each kept sample's token count (``lengths``), which length-grouped batches use.

    ``records`` is any sequence: a list (checked here), or a split file's lazy records with the
    table measured once for the data set (:meth:`from_split`, see ``train.split_index``).

    With ``features`` (a vision-feature cache, see ``train.feature_cache``) a sample carries its
    images' cached features instead of pixels, and no image is decoded.
    """

    records: Sequence[dict]
    image_root: Path
    tokenizer: object
    image_processor: object
    image_options: ImageOptions
    cutoff_len: int
    family: Family  # the model's: its chat template, image grid and token types
    features: object | None = None  # a FeatureCache holding every image of the records
    table: SampleTable | None = None  # None: measured here, record by record

    def __post_init__(self) -> None:
        # What collate needs to batch the samples.
        self.tokens = TokenIds.from_tokenizer(self.tokenizer, self.family.template)
        self.token_types = model_takes_token_types(self.family.model_class())
        if self.table is None:
            check = functools.partial(
                check_sample,
                image_root=self.image_root,
                tokenizer=self.tokenizer,
                image_pad_id=self.tokens.image_pad,
                image_options=self.image_options,
                cutoff_len=self.cutoff_len,
                family=self.family,
            )
            self.table = measure(iter(self.records), check)
        self.positions = self.table.kept  # the kept samples' positions in ``records``
        self.lengths = self.table.lengths[self.positions]
        self.dropped = self.table.dropped

    @classmethod
    def from_split(
        cls,
        path: Path,
        tokenizer,
        image_processor,
        image_options: ImageOptions,
        cutoff_len: int,
        family: Family,
        max_samples: int | None = None,
    ) -> SFTDataset:
        """The first ``max_samples`` records of a prepared split file, read lazily, with the table
        read from (or measured once into) the split's index: constant time and memory per process."""
        root = Path(path).parent
        settings = {
            # The family sizes images (its grid) and renders the conversation (its template).
            "family": family.model_type,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "image_options": json.loads(json.dumps(asdict(image_options), default=str)),
            "cutoff_len": cutoff_len,
        }
        check = functools.partial(
            check_sample,
            image_root=root,
            tokenizer=tokenizer,
            image_pad_id=TokenIds.from_tokenizer(tokenizer, family.template).image_pad,
            image_options=image_options,
            cutoff_len=cutoff_len,
            family=family,
        )
        records, table = load_split(path, settings, check)
        return cls(
            records,
            root,
            tokenizer,
            image_processor,
            image_options,
            cutoff_len,
            family,
            table=table.head(max_samples),
        )

    def image_paths(self) -> list[Path]:
        """Every image the kept records use (a cache is built for exactly these)."""
        return [
            self.image_root / p for i in self.positions.tolist() for p in self.records[i].get("images", [])
        ]

    def image_tokens(self) -> int:
        """Image tokens of all kept samples: the vision-feature cache holds one feature row for each."""
        return int(self.table.image_tokens[self.positions].sum())

    def __len__(self) -> int:
        return len(self.positions)

    def _images(self, record: dict) -> dict:
        """The record's images as the model takes them: pixels, or cached features; and their grids."""
        paths = [self.image_root / p for p in record.get("images", [])]
        if not paths:
            return {}
        if self.features is not None:
            cached = [self.features.get(path) for path in paths]
            return {
                "image_features": torch.cat([features for features, _ in cached]),
                "image_grid_thw": torch.cat([grid for _, grid in cached]),
            }
        images = [prepare_image(path, self.image_options, grid=self.family.grid).image for path in paths]
        processed = self.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}

    def __getitem__(self, index: int) -> dict:
        record = self.records[int(self.positions[index])]
        images = self._images(record)
        tokens, sizes = [], []
        if images:
            merge, patch = self.image_processor.merge_size, self.family.grid.patch
            for t, h, w in images["image_grid_thw"].tolist():
                tokens.append(int(t * h * w) // merge**2)
                sizes.append((int(w) * patch, int(h) * patch))
        messages = messages_to_model(record["messages"], self.family.grounding, one_frame(sizes))
        encoded = expand_image_pads(
            encode_text(self.tokenizer, messages, self.family.template),
            tokens,
            self.cutoff_len,
            self.tokens.image_pad,
        )
        if isinstance(encoded, str):  # the length check ran on the same sizes; this cannot differ
            raise RuntimeError(f"sample {record.get('id')} changed since it was checked: {encoded}")
        return {
            "input_ids": torch.tensor(encoded.input_ids),
            "labels": torch.tensor(encoded.labels),
            **images,
        }


@functools.cache
def model_takes_token_types(model_class: type) -> bool:
    """transformers >= 5.2x wants ``mm_token_type_ids`` (which tokens are image/video) for M-RoPE;
    earlier 5.x releases compute it from the ids themselves and do not accept it."""
    return "mm_token_type_ids" in inspect.signature(model_class.forward).parameters


def mm_token_types(input_ids: torch.Tensor, image_pad_id: int, video_pad_id: int) -> torch.Tensor:
    """0 for text, 1 for image tokens, 2 for video tokens, as the model's processor marks them."""
    return (input_ids == image_pad_id).long() + 2 * (input_ids == video_pad_id).long()


def collate(samples: list[dict], tokens: TokenIds, pack_to: int | None = None, *, token_types: bool) -> dict:
    """Right-pad a batch with ``tokens.pad``; image patches (or cached features) of all samples are
    concatenated. ``tokens`` are the ids of the tokenizer that encoded the samples (``SFTDataset.tokens``),
    ``token_types`` whether the model takes ``mm_token_type_ids`` (``SFTDataset.token_types``).

    With ``pack_to`` the samples are packed end to end into rows of at most that many tokens (see
    ``train.packing``): the batch then has ``text_position_ids`` restarting at 0 for each sample
    (padding counts as one more) instead of an ``attention_mask``.
    """
    lengths = [len(s["input_ids"]) for s in samples]
    rows = pack_rows(lengths, pack_to) if pack_to else [[i] for i in range(len(samples))]
    longest = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), longest), tokens.pad, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    text_positions = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            end = offset + lengths[i]
            input_ids[r, offset:end] = samples[i]["input_ids"]
            labels[r, offset:end] = samples[i]["labels"]
            text_positions[r, offset:end] = torch.arange(lengths[i])
            offset = end
        attention_mask[r, :offset] = 1
        text_positions[r, offset:] = torch.arange(longest - offset)
    batch = {"input_ids": input_ids, "labels": labels}
    if pack_to:
        batch["text_position_ids"] = text_positions
    else:
        batch["attention_mask"] = attention_mask
    if token_types:
        batch["mm_token_type_ids"] = mm_token_types(input_ids, tokens.image_pad, tokens.video_pad)
    # Rows hold consecutive samples, so sample order is the order of the image-pad runs.
    for key in ("pixel_values", "image_features", "image_grid_thw"):
        parts = [s[key] for s in samples if key in s]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def load_records(path: Path, max_samples: int | None = None) -> list[dict]:
    """Records of a prepared split file (a JSON array), the first ``max_samples`` of them."""
    records = read_split(path)
    return records[:max_samples] if max_samples else records
