"""Session-wide fixtures: each expensive artefact is built once per test session and shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny Qwen2-VL (real tokenizer), built once for the whole session."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120-row phantom data set in three shards, built once for the whole session."""
    return build_phantom(tmp_path_factory.mktemp("phantom") / "set", rows=120, seed=7, rows_per_shard=50)
