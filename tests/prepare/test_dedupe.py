import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ctscribe.ct.images import ImageOptions, prepare_image
from ctscribe.fixtures.phantom import ROI_GREEN, TruthRow, generate_rows
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.prepare.dedupe import DEFAULT_MAX_DISTANCE, HASH_BITS, NearDuplicateIndex, image_hash


@pytest.fixture(scope="module")
def hashed() -> list[tuple[TruthRow, str]]:
    """Every decodable row of a 400-row phantom set with the hash the data pipeline stores for it."""
    rows = []
    for truth, data, _ in generate_rows(400, seed=7):
        if not truth.corrupt:
            rows.append((truth, image_hash(prepare_image(data, grid=DEFAULT_FAMILY.grid).full_frame)))
    return rows


def _distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _bits(hashes: list[str]) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8)).reshape(
        len(hashes), -1
    )


def test_hash_is_1024_bits_of_hex(hashed):
    assert all(len(h) == HASH_BITS // 4 and int(h, 16) >= 0 for _, h in hashed)


def test_measured_margin_between_duplicates_and_distinct_slices(hashed):
    by_id = {truth.id: h for truth, h in hashed}
    duplicates = [_distance(h, by_id[t.duplicate_of]) for t, h in hashed if t.duplicate_of]
    originals = [(t, h) for t, h in hashed if t.duplicate_of is None]
    closest_distinct = HASH_BITS
    for group in {(t.modality, t.region) for t, _ in originals}:
        members = [h for t, h in originals if (t.modality, t.region) == group]
        bits = _bits(members)
        distances = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
        upper = distances[np.triu_indices(len(members), k=1)]
        if upper.size:
            closest_distinct = min(closest_distinct, int(upper.min()))
    print(
        f"\n{len(duplicates)} duplicates: max distance {max(duplicates)}; threshold {DEFAULT_MAX_DISTANCE}; "
        f"closest distinct same-region pair {closest_distinct} (of {HASH_BITS} bits)"
    )
    assert len(duplicates) >= 10
    assert max(duplicates) < DEFAULT_MAX_DISTANCE < closest_distinct


def test_index_drops_every_duplicate_and_nothing_else(hashed):
    index = NearDuplicateIndex()
    found = []
    for start in range(0, len(hashed), 50):  # blocks, as finalize passes them
        block = hashed[start : start + 50]
        found += index.add_first_occurrences([t.id for t, _ in block], [h for _, h in block])
    for (truth, _), match in zip(hashed, found, strict=True):
        earlier = match and match[1]
        assert earlier == truth.duplicate_of, (truth.modality, truth.region, truth.duplicate_of)
    assert len(index) == sum(1 for t, _ in hashed if t.duplicate_of is None)


def test_box_drawn_or_not_hashes_alike():
    """The same slice with and without MedTrinity's green box is one image once the box is removed."""
    rows = [
        (truth, data)
        for truth, data, _ in generate_rows(120, seed=7)
        if truth.modality == "CT"
        and truth.lesion
        and not (truth.roi_box or truth.duplicate_of or truth.corrupt)
    ]
    assert len(rows) >= 10
    for truth, data in rows:
        clean = prepare_image(data, grid=DEFAULT_FAMILY.grid).full_frame
        x0, y0, x1, y1 = truth.lesion_box
        boxed = clean.copy()
        box = (max(0, x0 - 4), max(0, y0 - 4), min(clean.width - 1, x1 + 4), min(clean.height - 1, y1 + 4))
        ImageDraw.Draw(boxed).rectangle(box, outline=ROI_GREEN, width=2)
        for fmt, params in (("PNG", {}), ("JPEG", {"quality": 80})):
            buffer = io.BytesIO()
            boxed.save(buffer, format=fmt, **params)
            prepared = prepare_image(
                buffer.getvalue(), ImageOptions(roi_box="remove"), grid=DEFAULT_FAMILY.grid
            )
            assert prepared.roi_box is not None
            distance = _distance(image_hash(clean), image_hash(prepared.full_frame))
            assert distance <= DEFAULT_MAX_DISTANCE, (fmt, distance)


def test_resized_and_reencoded_copies_match():
    data = next(d for t, d, _ in generate_rows(20, seed=3) if t.modality == "CT" and not t.corrupt)
    source = prepare_image(data, grid=DEFAULT_FAMILY.grid).full_frame
    original = image_hash(source)
    for scale in (0.5, 0.75, 1.25, 2.0):
        resized = source.resize(
            (round(source.width * scale), round(source.height * scale)), Image.Resampling.BICUBIC
        )
        for fmt, params in (("PNG", {}), ("JPEG", {"quality": 70})):
            buffer = io.BytesIO()
            resized.save(buffer, format=fmt, **params)
            copy = image_hash(prepare_image(buffer.getvalue(), grid=DEFAULT_FAMILY.grid).full_frame)
            assert _distance(original, copy) <= DEFAULT_MAX_DISTANCE, (scale, fmt)


def _brute_force(entries: list[tuple[str, int]], value: int, max_distance: int) -> str | None:
    """The nearest earlier entry within max_distance, earliest on ties: what the index must return."""
    best = None
    for order, (key, other) in enumerate(entries):
        distance = (value ^ other).bit_count()
        if distance <= max_distance and (best is None or (distance, order) < best[:2]):
            best = (distance, order, key)
    return None if best is None else best[2]


@pytest.mark.parametrize("max_distance", [DEFAULT_MAX_DISTANCE, 12, 3, 0])
def test_index_agrees_with_brute_force(max_distance):
    """Random hashes, many planted near earlier ones (within, at and just past the threshold), some
    under a repeated key, passed in blocks of random size: each row's answer is the brute force's
    over the rows kept before it, whether they were indexed in an earlier block or kept in its own."""
    rng = random.Random(max_distance)
    index = NearDuplicateIndex(max_distance)
    values: list[int] = []
    keys: list[str] = []
    for step in range(400):
        if values and rng.random() < 0.6:
            base = rng.choice(values)
            flips = rng.choice([0, 1, max_distance, max_distance + 1, rng.randint(0, 2 * max_distance + 2)])
            value = base
            for bit in rng.sample(range(HASH_BITS), flips):
                value ^= 1 << bit
        else:
            value = rng.getrandbits(HASH_BITS)
        values.append(value)
        keys.append(f"row-{rng.randrange(step + 1) if rng.random() < 0.05 else step}")
    found = []
    while len(found) < len(values):
        start, size = len(found), rng.choice([1, 7, 64])
        hexes = [f"{v:0{HASH_BITS // 4}x}" for v in values[start : start + size]]
        found += index.add_first_occurrences(keys[start : start + size], hexes)
    kept: list[tuple[str, int]] = []
    matches = 0
    for step, (key, value, match) in enumerate(zip(keys, values, found, strict=True)):
        if key in {k for k, _ in kept}:
            expected = ("same_id", key)
        else:
            earlier = _brute_force(kept, value, max_distance)
            expected = None if earlier is None else ("near_duplicate", earlier)
        assert match == expected, step
        matches += expected is not None and expected[0] == "near_duplicate"
        if expected is None:
            kept.append((key, value))
    assert len(index) == len(kept)
    assert matches > 80  # the planted near copies of kept rows are found


def test_index_rejects_malformed_hashes():
    index = NearDuplicateIndex()
    with pytest.raises(ValueError, match="1024-bit"):
        index.add_first_occurrences(["row"], ["abc"])
    with pytest.raises(ValueError, match="hex"):
        index.add_first_occurrences(["row"], ["z" * (HASH_BITS // 4)])
    with pytest.raises(ValueError, match="max_distance"):
        NearDuplicateIndex(HASH_BITS)
    assert len(index) == 0
    assert index.add_first_occurrences(["row"], ["0" * (HASH_BITS // 4)]) == [None]
