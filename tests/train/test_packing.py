import pytest
import torch

from ctscribe.fixtures.tiny_model import IMAGE_PAD_ID
from ctscribe.train.model_inputs import model_inputs
from ctscribe.train.packing import count_images, pack_rows
from ctscribe.train.samples import collate


def test_pack_rows_keeps_order_and_capacity():
    assert pack_rows([3, 4, 2, 5, 1], capacity=7) == [[0, 1], [2, 3], [4]]
    assert pack_rows([7, 7], capacity=7) == [[0], [1]]
    with pytest.raises(ValueError, match="8 tokens cannot be packed into rows of 7"):
        pack_rows([8], capacity=7)


def test_count_images_counts_runs_of_image_pads():
    p = IMAGE_PAD_ID
    assert count_images(torch.tensor([[1, p, p, 2, p, 3, p, p, p]]), p) == 3
    assert count_images(torch.tensor([[1, 2, 3]]), p) == 0


def test_packed_batch_layout(make_dataset):
    dataset = make_dataset()
    samples = [dataset[i] for i in range(3)]
    lengths = [len(s["input_ids"]) for s in samples]
    batch = collate(samples, dataset.tokens, pack_to=lengths[0] + lengths[1], token_types=dataset.token_types)
    assert batch["input_ids"].shape == (2, lengths[0] + lengths[1])
    assert "attention_mask" not in batch
    starts = [(row == 0).nonzero().flatten().tolist() for row in batch["text_position_ids"]]
    assert starts == [[0, lengths[0]], [0, lengths[2]]]  # the second row's padding starts a segment
    assert torch.equal(batch["input_ids"][0, lengths[0] :], samples[1]["input_ids"])
    assert batch["image_grid_thw"].tolist() == torch.cat([s["image_grid_thw"] for s in samples]).tolist()


def _packed_and_unpacked(model, dataset, labelled_count):
    """(unpacked output, packed output, leaky output, lengths) of the dataset's first three samples in
    one packed row, with per-sample positions, and with positions running on (no borders)."""
    core = dataset.family.core(model)
    samples = [dataset[i] for i in range(3)]
    lengths = [len(s["input_ids"]) for s in samples]
    unpacked, packed = (
        collate(samples, dataset.tokens, token_types=dataset.token_types),
        collate(samples, dataset.tokens, pack_to=512, token_types=dataset.token_types),
    )
    assert packed["input_ids"].shape == (1, sum(lengths))
    count = labelled_count(unpacked)
    assert labelled_count(packed) == count
    with torch.no_grad():
        expected = model(**unpacked, num_items_in_batch=count)
        got = model(**model_inputs(dataset.family, core, packed), num_items_in_batch=count)
        # Without the per-sample borders (positions running on), samples see each other: another loss.
        leaky = dict(packed, text_position_ids=torch.arange(sum(lengths))[None])
        leaked = model(**model_inputs(dataset.family, core, leaky), num_items_in_batch=count)
    return expected, got, leaked, lengths


def _same_per_sample(expected, got, lengths) -> bool:
    offsets = [0, lengths[0], lengths[0] + lengths[1]]
    return got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6) and all(
        torch.allclose(got.logits[0, offset : offset + length], expected.logits[row, :length], atol=1e-5)
        for row, (offset, length) in enumerate(zip(offsets, lengths, strict=True))
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_the_loss_and_logits_of_unpacked_ones(
    make_dataset, labelled_count, tiny_model, attention
):
    tiny_model.set_attn_implementation(attention)
    expected, got, leaked, lengths = _packed_and_unpacked(tiny_model, make_dataset(), labelled_count)
    tiny_model.set_attn_implementation("sdpa")
    assert _same_per_sample(expected, got, lengths)
    # The random model attends weakly, so the leak shows in the logits (far beyond the 1e-5 above)
    # more reliably than in the loss.
    assert not torch.allclose(leaked.logits, got.logits, atol=1e-3)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_packing_per_family_keeps_samples_apart_or_is_switched_off(model_type, family_setup, labelled_count):
    """The leak control on each newer family's tiny fixture: packed rows give the unpacked loss and
    logits, or (Qwen3.5, whose linear-attention layers carry state along the row) they do not, which
    is why that family lists packing among its limits and the default recipe packs it off."""
    model, _, dataset = family_setup(model_type)
    expected, got, _, lengths = _packed_and_unpacked(model, dataset, labelled_count)
    assert ("packing" in dataset.family.limits) is not _same_per_sample(expected, got, lengths)
