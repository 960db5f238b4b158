import shutil

import pytest
import torch

from ctscribe.models import DEFAULT_FAMILY, FAMILIES
from ctscribe.recipe import Recipe, RecipeError, validate
from ctscribe.train import feature_cache
from ctscribe.train.feature_cache import INDEX, FeatureCache, build_feature_cache, cache_wanted
from ctscribe.train.model_inputs import model_inputs
from ctscribe.train.samples import collate


def _build(root, model, processor, dataset):
    family = dataset.family
    return build_feature_cache(
        root,
        family,
        family.vision_tower(model),
        processor.image_processor,
        dataset.image_options,
        dataset.image_paths(),
    )


def _no_tower(*args, **kwargs):
    raise AssertionError("the vision tower ran although every image was cached")


@pytest.mark.parametrize("pack_to", [None, 512], ids=["unpacked", "packed"])
def test_loss_from_cached_features_equals_the_ordinary_loss(
    tmp_path, processor, make_dataset, labelled_count, tiny_model, pack_to
):
    dataset = make_dataset()
    ordinary = collate([dataset[i] for i in range(3)], dataset.tokens, token_types=dataset.token_types)
    count = labelled_count(ordinary)
    dataset.features = _build(tmp_path, tiny_model, processor, dataset)
    cached = collate(
        [dataset[i] for i in range(3)], dataset.tokens, pack_to=pack_to, token_types=dataset.token_types
    )
    assert "pixel_values" not in cached and cached["image_features"].dtype == torch.bfloat16
    with torch.no_grad():
        expected = tiny_model(**ordinary, num_items_in_batch=count).loss
        got = tiny_model(
            **model_inputs(dataset.family, dataset.family.core(tiny_model), cached), num_items_in_batch=count
        ).loss
    # Features are stored in bf16 (what a bf16 run computes anyway); the fp32 model sees them rounded.
    assert got.item() == pytest.approx(expected.item(), rel=2e-3)


@pytest.mark.parametrize(
    "model_type",
    [t for t, f in FAMILIES.items() if f is not DEFAULT_FAMILY and "cache_vision_features" not in f.limits],
)
def test_cached_features_give_the_ordinary_loss_on_every_family_that_caches(
    tmp_path, model_type, family_setup, labelled_count
):
    """The same check on each other family the cache serves (Qwen2.5-VL's windowed tower, Qwen3.5's)."""
    model, processor, dataset = family_setup(model_type)
    family = dataset.family
    ordinary = collate([dataset[i] for i in range(3)], dataset.tokens, token_types=dataset.token_types)
    count = labelled_count(ordinary)
    dataset.features = _build(tmp_path, model, processor, dataset)
    cached = collate([dataset[i] for i in range(3)], dataset.tokens, token_types=dataset.token_types)
    with torch.no_grad():
        expected = model(**ordinary, num_items_in_batch=count).loss
        got = model(**model_inputs(family, family.core(model), cached), num_items_in_batch=count).loss
    assert got.item() == pytest.approx(expected.item(), rel=2e-3)


def test_cache_is_reused_and_rebuilt_when_budget_or_model_changes(
    tmp_path, processor, make_dataset, tiny_model, monkeypatch
):
    dataset = make_dataset()
    first = _build(tmp_path, tiny_model, processor, dataset)
    assert len(first.where) == 3
    shards = sorted(p.name for p in first.folder.iterdir())

    with monkeypatch.context() as patch:
        patch.setattr(feature_cache, "merged_features", _no_tower)
        again = _build(tmp_path, tiny_model, processor, dataset)
    assert again.folder == first.folder and sorted(p.name for p in again.folder.iterdir()) == shards

    smaller = make_dataset(max_pixels=112 * 112)
    budget = _build(tmp_path, tiny_model, processor, smaller)
    assert budget.folder != first.folder and len(budget.where) == 3
    features, grid = budget.get(smaller.image_paths()[1])
    full, _ = first.get(dataset.image_paths()[1])
    assert features.shape[0] == int(grid.prod()) // 4 == 10 < full.shape[0] == 32  # 224x112 in 112*112 px

    visual = dataset.family.vision_tower(tiny_model)
    weight = next(visual.parameters())
    with torch.no_grad():
        weight.add_(1e-3)
    try:
        changed = _build(tmp_path, tiny_model, processor, dataset)
    finally:
        with torch.no_grad():
            weight.sub_(1e-3)
    assert changed.folder not in (first.folder, budget.folder)


def test_a_torn_shard_is_detected_and_rebuilt(tmp_path, processor, make_dataset, tiny_model, monkeypatch):
    monkeypatch.setattr(feature_cache, "SHARD_IMAGES", 1)
    monkeypatch.setattr(feature_cache, "BUILD_BATCH", 1)
    dataset = make_dataset()
    whole = _build(tmp_path, tiny_model, processor, dataset)
    assert len(whole.shards) == 3
    path = dataset.image_paths()[2]
    expected = whole.get(path)[0].clone()  # get() may map the file, which is cut below
    torn = whole.folder / whole.where[whole.key_of(path)]
    torn.write_bytes(torn.read_bytes()[:-100])  # as a copy or a disk cut short would leave it
    (whole.folder / ".shard-00009.safetensors.tmp").write_bytes(b"half")  # a killed build's leftover

    reopened = FeatureCache(whole.folder)
    assert len(reopened.shards) == 2 and reopened.key_of(path) not in reopened
    rebuilt = _build(tmp_path, tiny_model, processor, dataset)
    assert len(rebuilt.shards) == 3 and not (whole.folder / ".shard-00009.safetensors.tmp").exists()
    assert torch.equal(rebuilt.get(path)[0], expected)


def test_same_content_is_one_entry_and_a_missing_image_is_a_clear_error(
    tmp_path, processor, make_dataset, tiny_model
):
    dataset = make_dataset()
    copy = tmp_path / "copy.png"
    shutil.copy(dataset.image_paths()[0], copy)
    cache = build_feature_cache(
        tmp_path / "cache",
        dataset.family,
        dataset.family.vision_tower(tiny_model),
        processor.image_processor,
        dataset.image_options,
        [*dataset.image_paths(), copy],
    )
    assert len(cache.where) == 3
    assert torch.equal(cache.get(copy)[0], cache.get(dataset.image_paths()[0])[0])
    assert (cache.folder / INDEX).is_file()
    other = tmp_path / "other.png"
    other.write_bytes(b"not cached")
    with pytest.raises(KeyError, match="not in the vision-feature cache"):
        cache.get(other)


def test_cache_is_wanted_only_with_a_frozen_tower_and_projector():
    assert cache_wanted(Recipe())
    assert not cache_wanted(Recipe(freeze_vision_tower=False))
    assert not cache_wanted(Recipe(freeze_multi_modal_projector=False))
    assert not cache_wanted(Recipe(cache_vision_features=False))
    # auto turns it off where the tower is sharded (true is refused there: tests/test_recipe.py)
    assert not cache_wanted(Recipe(fsdp="full_shard auto_wrap"))
    with pytest.raises(RecipeError, match="cache_vision_features: true needs freeze_vision_tower"):
        validate(Recipe(cache_vision_features=True, freeze_multi_modal_projector=False))


def test_a_damaged_index_means_an_empty_cache_that_is_rebuilt(tmp_path, processor, make_dataset, tiny_model):
    dataset = make_dataset()
    cache = _build(tmp_path, tiny_model, processor, dataset)
    (cache.folder / INDEX).write_text("{not json")
    assert not FeatureCache(cache.folder).where
    assert len(_build(tmp_path, tiny_model, processor, dataset).where) == 3


def test_cache_past_its_bound_is_not_built_and_the_log_says_why(
    tmp_path, processor, make_dataset, tiny_model, caplog
):
    from transformers import TrainingArguments

    from ctscribe.train.native import feature_cache_within_bound

    dataset = make_dataset()
    hidden = tiny_model.config.text_config.hidden_size
    estimate = feature_cache.cache_bytes(dataset.image_tokens(), hidden)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    bound_gb = estimate / 2 / 1e9
    recipe = Recipe(vision_feature_cache_max_gb=bound_gb)
    with caplog.at_level("INFO", logger="ctscribe.train.native"):
        cache = feature_cache_within_bound(
            recipe, args, dataset.family, tiny_model, processor, dataset.image_options, [dataset]
        )
    assert cache is None and not (tmp_path / "feature_cache").exists()
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"estimated {estimate / 1e9:.2f} GB" in line and f"vision_feature_cache_max_gb={bound_gb}" in line
    assert "off (over vision_feature_cache_max_gb" in line
    # Within the bound (the control): built, and the log line gives the same estimate.
    caplog.clear()
    recipe = Recipe(vision_feature_cache_max_gb=estimate * 2 / 1e9)
    with caplog.at_level("INFO", logger="ctscribe.train.native"):
        cache = feature_cache_within_bound(
            recipe, args, dataset.family, tiny_model, processor, dataset.image_options, [dataset]
        )
    assert cache is not None and len(cache.where) == 3
    assert f"estimated {estimate / 1e9:.2f} GB" in caplog.records[0].getMessage()


def test_cache_over_the_free_disk_is_refused():
    assert feature_cache.cache_size_refusal(10, None, free=100) is None
    assert feature_cache.cache_size_refusal(200, None, free=100) == "over the 0.0 GB free on disk"
    assert feature_cache.cache_size_refusal(2e9, 1.0, free=10**12) == "over vision_feature_cache_max_gb=1"
