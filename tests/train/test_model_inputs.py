import pytest
import torch

from ctscribe.fixtures.tiny_model import IMAGE_PAD_ID, VIDEO_PAD_ID
from ctscribe.train.model_inputs import model_inputs, rope_positions, with_image_features
from ctscribe.train.samples import collate, mm_token_types


def test_unpacked_plain_batches_pass_through(make_dataset):
    dataset = make_dataset()
    batch = collate([dataset[0], dataset[1]], dataset.tokens, token_types=dataset.token_types)
    assert model_inputs(dataset.family, None, batch) == batch  # nothing to compute: the model does it all


def test_rope_positions_of_one_sample_per_row_are_the_models_own(make_dataset, tiny_model):
    dataset = make_dataset()
    batch = collate([dataset[1], dataset[2]], dataset.tokens, token_types=dataset.token_types)
    rows, length = batch["input_ids"].shape
    core = dataset.family.core(tiny_model)
    text = torch.arange(length).expand(rows, length)
    ours = rope_positions(dataset.family, core, batch["input_ids"], text, batch["image_grid_thw"])
    types = mm_token_types(batch["input_ids"], IMAGE_PAD_ID, VIDEO_PAD_ID)
    theirs, _ = core.get_rope_index(batch["input_ids"], types, batch["image_grid_thw"])
    assert ours.shape == (4, rows, length)
    assert torch.equal(ours[0], text)
    assert torch.equal(ours[1:], theirs)
    # An image changes the M-RoPE positions (height/width), so the check above is not vacuous.
    assert not torch.equal(ours[1], ours[2])


def test_image_features_must_match_the_image_pads(make_dataset, tiny_model):
    dataset = make_dataset()
    ids = dataset[0]["input_ids"][None]
    pads = int((ids == IMAGE_PAD_ID).sum())
    width = tiny_model.config.text_config.hidden_size
    embeds = with_image_features(dataset.family.core(tiny_model), ids, torch.ones(pads, width))
    assert torch.equal(embeds[ids == IMAGE_PAD_ID], torch.ones(pads, width))
    with pytest.raises(ValueError, match=f"{pads} image-pad tokens but {pads - 1} cached feature rows"):
        with_image_features(dataset.family.core(tiny_model), ids, torch.ones(pads - 1, width))
