"""Near-duplicate images, found among millions of rows without comparing every pair.

MedTrinity-25M holds the same image several times under different ids: re-encoded, resized, with
and without its green region-of-interest box. A copy that lands in train while its twin lands in
test leaks the test answer into training, so every copy after the first is dropped.

What is hashed: :attr:`ctscribe.data.images.PreparedImage.full_frame`, the decoded RGB image at its
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

    Pass :attr:`~ctscribe.data.images.PreparedImage.full_frame`, not the cropped, resized model
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
    its key; up to twice that while the arrays double), plus a fixed 60 MB of bucket heads. Measured:
    find + add take ~0.2 ms at 300,000 random hashes, 0.9 kB per hash all told. Chunks longer than
    ``MAX_BUCKET_BITS`` (small thresholds) are folded into that many bits by XOR, which only adds
    candidates, never loses one.
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

    def __len__(self) -> int:
        return len(self._keys)

    def _split(self, hex_hash: str) -> tuple[np.ndarray, np.ndarray]:
        """The hash as 64-bit words and each chunk's bucket; ValueError unless a HASH_BITS hex string."""
        if len(hex_hash) != HASH_BITS // 4:
            raise ValueError(
                f"expected a {HASH_BITS}-bit hash ({HASH_BITS // 4} hex digits), got {len(hex_hash)}"
            )
        try:
            raw = bytes.fromhex(hex_hash)
        except ValueError as exc:
            raise ValueError(f"not a hex hash: {hex_hash[:16]!r}...") from exc
        bits = np.zeros(self._chunks * self._chunk_bits, dtype=np.uint8)
        bits[:HASH_BITS] = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
        # Row i of the transposed reshape is bits i, i + k, i + 2k, ... (zero padding is shared by all).
        chunks = bits.reshape(self._chunk_bits, self._chunks).T
        # Fold: bit j of a chunk toggles bucket bit j % bucket_bits (the identity for short chunks).
        groups = -(-self._chunk_bits // self._bucket_bits)
        folded = np.zeros((self._chunks, groups * self._bucket_bits), dtype=np.uint8)
        folded[:, : self._chunk_bits] = chunks
        parity = folded.reshape(self._chunks, groups, self._bucket_bits).sum(axis=1) & 1
        words = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        return words, parity.astype(np.int64) @ self._bucket_weights

    def find(self, hex_hash: str) -> str | None:
        """Key of the nearest earlier hash within ``max_distance`` bits (earliest on ties), or None."""
        words, buckets = self._split(hex_hash)
        found: list[int] = []
        for chunk, row in enumerate(self._head[np.arange(self._chunks), buckets].tolist()):
            while row >= 0:
                found.append(row)
                row = int(self._next[row, chunk])
        if not found:
            return None
        rows = np.unique(np.asarray(found))  # ascending, so argmin below picks the earliest on ties
        distances = np.bitwise_count(self._words[rows] ^ words).sum(axis=1)
        best = int(np.argmin(distances))
        return self._keys[int(rows[best])] if distances[best] <= self.max_distance else None

    def add(self, key: str, hex_hash: str) -> None:
        """Index ``hex_hash`` under ``key`` (a row id), for later :meth:`find` calls to return."""
        words, buckets = self._split(hex_hash)
        row = len(self._keys)
        if row == len(self._words):  # grow by doubling: amortised O(1) per add
            capacity = max(1024, 2 * row)
            self._words = np.concatenate(
                [self._words, np.empty((capacity - row, HASH_BITS // 64), np.uint64)]
            )
            self._next = np.concatenate([self._next, np.empty((capacity - row, self._chunks), np.int32)])
        chunks = np.arange(self._chunks)
        self._words[row] = words
        self._next[row] = self._head[chunks, buckets]
        self._head[chunks, buckets] = row
        self._keys.append(key)
