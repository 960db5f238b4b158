"""Vision-feature cache: each image through the frozen vision tower once, not once per epoch.

With the vision tower and projector frozen (the default recipe), an image's merged features (what
the model scatters into the image-pad positions) are the same in every epoch, yet a trainer runs the
675M-parameter tower on every image at every step; no public trainer caches them. This module
computes them once and stores them in bf16 safetensors shards that are memory-mapped when read.

Layout, one folder per fingerprint (vision weights + config, pixel budget, image options)::

    ROOT/<fingerprint>/index.json            {"fingerprint", "shards": {name: {"bytes", "keys"}}}
    ROOT/<fingerprint>/shard-00000.safetensors   "<key>.features" (tokens, hidden) bf16, "<key>.grid" (3,)

An image's key is the sha256 of its file's bytes, so renamed or duplicated files share an entry and
an edited file gets a new one. Changing the weights, the pixel budget or the image options changes
the fingerprint, hence the folder: a stale cache is never read. Shards are written to a temporary
file and renamed, the index likewise after each shard; a shard whose size differs from the index or
whose header does not parse (truncated, half-copied) is dropped and its images are computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ctscribe.atomic import atomic_write, atomic_write_bytes
from ctscribe.ct.images import ImageOptions, prepare_image
from ctscribe.models.family import Family
from ctscribe.recipe import Recipe, parameter_sharding

INDEX = "index.json"
# Images per shard: about 250 MB of bf16 features at DEFAULT_MAX_PIXELS for the 2B model (324 x 1536 x 2 bytes
# each), so 100,000 images make ~400 files rather than one per image.
SHARD_IMAGES = 256
# Shards kept open (memory-mapped) per process: bounded, so no worker runs into the open-file limit.
OPEN_SHARDS = 32
# Images per vision-tower forward while building: bounded so the tower's attention fits any GPU.
BUILD_BATCH = 8


def cache_wanted(recipe: Recipe) -> bool:
    """``auto``: cache whenever the features cannot change, i.e. tower and projector are frozen, and
    the weights are not sharded (FSDP, ZeRO-3): the cache computes features on the unwrapped model's
    vision tower, which sharding leaves as fragments (``true`` with sharding fails recipe validation)."""
    if recipe.cache_vision_features == "auto":
        frozen = recipe.freeze_vision_tower and recipe.freeze_multi_modal_projector
        return frozen and parameter_sharding(recipe) is None
    return recipe.cache_vision_features


def cache_size_refusal(estimate: int, max_gb: float | None, free: int) -> str | None:
    """Why a cache of ``estimate`` bytes is not built (over ``max_gb``, or over the ``free`` disk
    bytes), or None when it fits. Past either, training reads pixels instead: slower per epoch, but it
    starts at once and never fills the disk (see docs/TRAINING.md "When the feature cache pays")."""
    if max_gb is not None and estimate > max_gb * 1e9:
        return f"over vision_feature_cache_max_gb={max_gb:g}"
    if estimate > free:
        return f"over the {free / 1e9:.1f} GB free on disk"
    return None


def cache_bytes(image_tokens: int, hidden_size: int) -> int:
    """Bytes of bf16 features for ``image_tokens`` image tokens (tokens x hidden x 2), the estimate
    printed before building; content-identical images share an entry, so the real size is at most this."""
    return image_tokens * hidden_size * 2


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds (or will hold) ``folder``, plus what the cache there
    already takes (a rebuild reuses it)."""
    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    used = (
        sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else 0
    )
    return shutil.disk_usage(existing).free + used


def image_key(path: Path) -> str:
    """The sha256 of the image file's bytes: content, not name, identifies a cached image."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def vision_fingerprint(visual: torch.nn.Module, options: ImageOptions) -> str:
    """A digest of everything the features depend on: tower weights and config, budget, image options.

    The weights are hashed byte for byte (about 1.3 GB for the 2B tower, a few seconds) because a
    name or a file date would miss a fine-tuned tower saved under the same path.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(options), sort_keys=True, default=str).encode())
    config = getattr(visual, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(visual.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


class FeatureCache:
    """Read access to one fingerprint's shards; features come memory-mapped from safetensors."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.shards: dict[str, dict] = {}
        self.where: dict[str, str] = {}  # image key -> shard file name
        self._paths: dict[str, str] = {}  # image path -> key, so each file is hashed once per process
        self._handles: OrderedDict[str, object] = OrderedDict()  # least recently used first
        for name, entry in self._read_index().items():
            if self._shard_is_whole(name, entry["bytes"]):
                self.shards[name] = entry
                self.where.update(dict.fromkeys(entry["keys"], name))

    def _read_index(self) -> dict[str, dict]:
        """The index's shards; none if it is missing or damaged (written atomically, so only by hand)."""
        try:
            return json.loads((self.folder / INDEX).read_text())["shards"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _shard_is_whole(self, name: str, size: int) -> bool:
        """A shard counts only with the size the index recorded and a header that parses."""
        path = self.folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception:  # safetensors raises its own error types for a corrupt header
            return False
        return True

    def __getstate__(self) -> dict:
        """Picklable for spawned DataLoader workers: open shard handles stay behind."""
        return {**self.__dict__, "_handles": OrderedDict()}

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def key_of(self, path: Path) -> str:
        text = os.fspath(path)
        if text not in self._paths:
            self._paths[text] = image_key(path)
        return self._paths[text]

    def get(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached features (tokens, hidden) in bf16 and the grid (1, 3) of the image at ``path``."""
        key = self.key_of(path)
        if key not in self.where:
            raise KeyError(f"{path} is not in the vision-feature cache {self.folder}; rebuild it")
        name = self.where[key]
        if name not in self._handles:  # opened lazily, so each DataLoader worker maps its own
            self._handles[name] = safe_open(str(self.folder / name), framework="pt")
            if len(self._handles) > OPEN_SHARDS:
                self._handles.popitem(last=False)
        self._handles.move_to_end(name)
        handle = self._handles[name]
        return handle.get_tensor(f"{key}.features"), handle.get_tensor(f"{key}.grid")[None]

    def write_index(self) -> None:
        payload = {"fingerprint": self.folder.name, "shards": self.shards}
        atomic_write_bytes(self.folder / INDEX, json.dumps(payload).encode())

    def add_shard(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write one shard (temporary file, then rename) and record it in the index."""
        number = max((int(n.split("-")[1].split(".")[0]) for n in self.shards), default=-1) + 1
        name = f"shard-{number:05d}.safetensors"
        tensors = {}
        for key, (feats, grid) in features.items():
            tensors[f"{key}.features"] = feats.to(torch.bfloat16).cpu().contiguous()
            tensors[f"{key}.grid"] = grid.reshape(3).to(torch.int64).cpu()
        atomic_write(self.folder / name, lambda tmp: save_file(tensors, tmp))
        self.shards[name] = {"bytes": (self.folder / name).stat().st_size, "keys": sorted(features)}
        self.where.update(dict.fromkeys(features, name))
        self.write_index()

    def remove_strays(self) -> None:
        """Delete files no index entry names: torn shards and temporary files of a killed build."""
        for path in self.folder.iterdir():
            if path.name != INDEX and path.name not in self.shards:
                path.unlink()


@torch.no_grad()
def merged_features(family: Family, visual: torch.nn.Module, image_processor, images: list) -> list[tuple]:
    """(features, grid) per image: the vision tower and projector's output, as the model consumes it."""
    batch = image_processor(images=images, return_tensors="pt")
    device = next(visual.parameters()).device
    grid = batch["image_grid_thw"].to(device)
    output = visual(batch["pixel_values"].to(device, visual.dtype), grid_thw=grid)
    # transformers >= 5.2x returns an output object (merged features in pooler_output); earlier, a tensor.
    merged = output.pooler_output if hasattr(output, "pooler_output") else output
    sizes = family.merged_tokens(visual, grid).tolist()
    return list(zip(torch.split(merged, sizes), grid, strict=True))


def build_feature_cache(
    root: Path,
    family: Family,
    visual: torch.nn.Module,
    image_processor,
    options: ImageOptions,
    paths: Iterable[Path],
) -> FeatureCache:
    """The cache for these images under ``root``, computing only the images it does not hold yet;
    ``visual`` is the tower of a model of ``family``."""
    folder = Path(root) / vision_fingerprint(visual, options)
    folder.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(folder)
    cache.remove_strays()
    missing: dict[str, Path] = {}
    for path in paths:
        key = cache.key_of(path)
        if key not in cache and key not in missing:
            missing[key] = Path(path)
    was_training = visual.training
    visual.eval()
    pending: dict[str, tuple] = {}
    keys = list(missing)
    for start in range(0, len(keys), BUILD_BATCH):
        chunk = keys[start : start + BUILD_BATCH]
        images = [prepare_image(missing[key], options, grid=family.grid).image for key in chunk]
        pending.update(zip(chunk, merged_features(family, visual, image_processor, images), strict=True))
        if len(pending) >= SHARD_IMAGES:
            cache.add_shard(pending)
            pending = {}
    if pending:
        cache.add_shard(pending)
    cache.write_index()
    visual.train(was_training)
    return cache
