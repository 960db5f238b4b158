"""Near-duplicate images, found among millions of rows without comparing every pair.

MedTrinity-25M holds the same image several times under different ids: re-encoded, resized, with
and without its green region-of-interest box. A copy that lands in train while its twin lands in
test leaks the test answer into training, so every copy after the first is dropped.

What is hashed: :attr:`ctscribe.ct.images.PreparedImage.full_frame`, the decoded RGB image at its
own size with the green box painted out, *before* the background crop and the 28-px resize. A
resized copy is then an exact rescale of its source, which a perceptual hash ignores. After the crop
it is not: the crop box lands a pixel or two differently on a rescaled copy, and rounding each side
to a multiple of 28 changes the aspect ratio by up to ~7%. Measured on the phantom set, hashing the
final model input put true duplicates up to 154 of 1024 bits apart, far beyond distinct slices.

The hash: a 32 x 32 DCT pHash (1024 bits) of the grey image. Phantom slices of one body region look
alike at low resolution, and coarser hashes cannot tell them apart from duplicates: an 8 x 8 average
hash puts distinct slices at distance 0, a 16 x 16 pHash (256 bits) puts distinct slices 4 bits
apart and duplicates up to 6, a 24 x 24 pHash overlaps too (distinct 24, box drawn vs not 26).
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 32  # side of the pHash's DCT block
HASH_BITS = HASH_SIZE * HASH_SIZE
# Hamming distances in bits of 1024, measured on 5 phantom sets (seeds 7, 11, 23, 42, 99; 400 rows
# each; hash of the box-removed full frame):
#   true duplicates (JPEG q70-85 re-encode, or x0.75 / x1.25 resize + JPEG) ........ max 38
#   same slice with and without a green box, PNG or JPEG q60-92, same size .......... max 52
#   ... and the boxed copy also resized x0.75 / x1.25 (not covered below 62) ........ max 62
#   distinct slices of the same modality and region (94,113 pairs) ................. min 72 (X-ray),
#                                                                                    min 78 (CT)
# 56 takes every measured duplicate at its own size with 16 bits to spare below the closest
# distinct pair. A larger threshold would also mean more, smaller chunks in the index below.
DEFAULT_MAX_DISTANCE = 56
MAX_BUCKET_BITS = 18  # buckets per chunk: 2**18, so the default's 18-bit chunks are never folded


def image_hash(rgb: Image.Image) -> str:
    """A 1024-bit perceptual hash (hex) of ``rgb``, robust to re-encoding and resizing.

    Pass :attr:`~ctscribe.ct.images.PreparedImage.full_frame`, not the cropped, resized model
    input (see the module docstring for why).
    """
    return str(imagehash.phash(rgb.convert("L"), hash_size=HASH_SIZE))


class NearDuplicateIndex:
    """Finds an earlier hash within ``max_distance`` bits without comparing against every hash.

    Multi-index hashing: the hash is split into ``max_distance + 1`` chunks. By pigeonhole, two
    hashes at most ``max_distance`` bits apart agree exactly on at least one chunk, so only the hashes
    that share a chunk with the query are candidates, and those are checked by exact Hamming distance.

    Chunk ``i`` holds bits ``i, i + k, i + 2k, ...`` (``k`` chunks) rather than a contiguous run: pHash
    bits are DCT coefficients in frequency order, and neighbouring low-frequency coefficients are
    nearly the same for every CT slice, so contiguous chunks would make a few buckets hold almost
    every image. Measured on the phantom set at the default threshold (57 chunks of 18 bits), a query
    meets ~0.3% of the indexed hashes as candidates, as with a random bit order; random hashes would
    meet 0.02%.

    Memory is what lets this reach millions of rows: each chunk's buckets are singly linked lists
    threaded through int32 arrays (a head per bucket, a "next" per row and chunk) instead of Python
    lists in dicts, which cost ~9 kB per hash. Here a hash costs ~0.4 kB (57 links, its 128 bytes,
    its key; up to twice that while the arrays double), plus a fixed 60 MB of bucket heads. Chunks
    longer than ``MAX_BUCKET_BITS`` (small thresholds) are folded into that many bits by XOR, which
    only adds candidates, never loses one.

    Time: rows come in blocks, and the bucket lists of a whole block are walked together in numpy, so
    Python takes one step per list position rather than one per candidate. Candidates still grow
    with the rows indexed (a bucket holds ~rows / 2**18 random hashes, more for look-alike slices),
    so the walk is the one part of finalize whose cost per row grows; bench/scale.py measures it
    (docs/BENCHMARKS.md "Scale").
    """

    def __init__(self, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be in [0, {HASH_BITS}), not {max_distance}")
        self.max_distance = max_distance
        self._chunks = max_distance + 1
        self._chunk_bits = -(-HASH_BITS // self._chunks)
        self._bucket_bits = min(self._chunk_bits, MAX_BUCKET_BITS)
        self._bucket_weights = 1 << np.arange(self._bucket_bits, dtype=np.int64)
        self._head = np.full((self._chunks, 1 << self._bucket_bits), -1, dtype=np.int32)
        self._next = np.empty((0, self._chunks), dtype=np.int32)
        self._words = np.empty((0, HASH_BITS // 64), dtype=np.uint64)
        self._keys: list[str] = []
        self._key_set: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def _split(self, hex_hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each hash as 64-bit words (n, 16) and its bucket per chunk (n, chunks); ValueError unless
        every hash is a HASH_BITS hex string."""
        for hex_hash in hex_hashes:
            if len(hex_hash) != HASH_BITS // 4:
                raise ValueError(
                    f"expected a {HASH_BITS}-bit hash ({HASH_BITS // 4} hex digits), got {len(hex_hash)}"
                )
        try:
            raw = np.frombuffer(bytes.fromhex("".join(hex_hashes)), dtype=np.uint8)
        except ValueError as exc:
            bad = next(h for h in hex_hashes if not _is_hex(h))
            raise ValueError(f"not a hex hash: {bad[:16]!r}...") from exc
        count = len(hex_hashes)
        raw = raw.reshape(count, HASH_BITS // 8)
        bits = np.zeros((count, self._chunks * self._chunk_bits), dtype=np.uint8)
        bits[:, :HASH_BITS] = np.unpackbits(raw, axis=1)
        # Row i of each transposed reshape is bits i, i + k, i + 2k, ... (zero padding is shared by all).
        chunks = bits.reshape(count, self._chunk_bits, self._chunks).transpose(0, 2, 1)
        # Fold: bit j of a chunk toggles bucket bit j % bucket_bits (the identity for short chunks).
        groups = -(-self._chunk_bits // self._bucket_bits)
        folded = np.zeros((count, self._chunks, groups * self._bucket_bits), dtype=np.uint8)
        folded[:, :, : self._chunk_bits] = chunks
        parity = folded.reshape(count, self._chunks, groups, self._bucket_bits).sum(axis=2) & 1
        words = raw.copy().view(">u8").astype(np.uint64)
        return words, parity.astype(np.int64) @ self._bucket_weights

    def _nearest_indexed(self, words: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query, the nearest indexed row (earliest on ties) and its distance; row -1 and
        distance HASH_BITS + 1 when no candidate is within ``max_distance``.

        The bucket lists of every query and chunk are walked together, one numpy step per list
        position, so Python runs as many steps as the longest list, not one per candidate.
        """
        count = len(words)
        best_row = np.full(count, -1, dtype=np.int64)
        best_distance = np.full(count, HASH_BITS + 1, dtype=np.int64)
        if not self._keys or not count:
            return best_row, best_distance
        query = np.repeat(np.arange(count), self._chunks)
        chunk = np.tile(np.arange(self._chunks), count)
        row = self._head[chunk, buckets.reshape(-1)].astype(np.int64)
        found_query, found_row = [], []
        while True:
            live = row >= 0
            if not live.any():
                break
            query, chunk, row = query[live], chunk[live], row[live]
            found_query.append(query)
            found_row.append(row)
            row = self._next[row, chunk].astype(np.int64)
        if not found_query:
            return best_row, best_distance
        # A row met in several chunks is one candidate; sorted by (query, row).
        pairs = np.unique(np.concatenate(found_query) * len(self._keys) + np.concatenate(found_row))
        query, row = pairs // len(self._keys), pairs % len(self._keys)
        distance = np.bitwise_count(self._words[row] ^ words[query]).sum(axis=1).astype(np.int64)
        order = np.lexsort((row, distance, query))  # per query: nearest first, then earliest
        first = order[np.r_[True, query[order][1:] != query[order][:-1]]]
        within = first[distance[first] <= self.max_distance]
        best_row[query[within]] = row[within]
        best_distance[query[within]] = distance[within]
        return best_row, best_distance

    def _add_rows(self, keys: list[str], words: np.ndarray, buckets: np.ndarray) -> None:
        """Index rows at the end of the linked lists' heads; arrays grow by doubling (amortised O(1))."""
        row = len(self._keys)
        needed = row + len(keys)
        if needed > len(self._words):
            capacity = max(1024, 2 * len(self._words), needed)
            grow = capacity - len(self._words)
            self._words = np.concatenate([self._words, np.empty((grow, HASH_BITS // 64), np.uint64)])
            self._next = np.concatenate([self._next, np.empty((grow, self._chunks), np.int32)])
        chunks = np.arange(self._chunks)
        self._words[row:needed] = words
        for offset in range(len(keys)):  # sequential: rows of one call may share a bucket
            self._next[row + offset] = self._head[chunks, buckets[offset]]
            self._head[chunks, buckets[offset]] = row + offset
        self._keys.extend(keys)
        self._key_set.update(keys)

    def add_first_occurrences(self, keys: list[str], hex_hashes: list[str]) -> list[tuple[str, str] | None]:
        """Go through the rows in order; a row is a duplicate of an earlier *kept* row (indexed
        before, or kept earlier in this call) with the same key (``("same_id", key)``) or, else, of
        the nearest one within ``max_distance`` bits, earliest on ties (``("near_duplicate", key)``);
        a row that is neither is kept: indexed, and None in its place.

        Pass rows in blocks of a few hundred: the candidate walk against the index is vectorised
        over a block, and rows of the block are compared with each other directly.
        """
        words, buckets = self._split(hex_hashes)
        indexed_row, indexed_distance = self._nearest_indexed(words, buckets)
        kept: list[int] = []
        kept_keys: set[str] = set()
        results: list[tuple[str, str] | None] = []
        for i, key in enumerate(keys):
            if key in self._key_set or key in kept_keys:
                results.append(("same_id", key))
                continue
            match = self._keys[indexed_row[i]] if indexed_row[i] >= 0 else None
            if kept:
                distances = np.bitwise_count(words[kept] ^ words[i]).sum(axis=1)
                nearest = int(np.argmin(distances))  # earliest on ties; indexed rows are earlier still
                if distances[nearest] <= self.max_distance and distances[nearest] < indexed_distance[i]:
                    match = keys[kept[nearest]]
            if match is not None:
                results.append(("near_duplicate", match))
                continue
            kept.append(i)
            kept_keys.add(key)
            results.append(None)
        self._add_rows([keys[k] for k in kept], words[kept], buckets[kept])
        return results


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
