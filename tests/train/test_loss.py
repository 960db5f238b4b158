import pytest
import torch

from ctscribe.recipe import Recipe
from ctscribe.train.loss import labelled_only_loss, liger_active, predicting_positions
from ctscribe.train.samples import IGNORE_INDEX, collate


def test_predicting_positions_are_those_before_a_label():
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, 5, IGNORE_INDEX, 6, 9]]
    )
    assert predicting_positions(labels).tolist() == [
        [False, True, True, False, False],
        [True, False, True, True, False],
    ]


@pytest.mark.parametrize("count", [False, True], ids=["mean", "num_items_in_batch"])
def test_labelled_only_loss_and_gradients_equal_the_models_own(
    make_dataset, labelled_count, tiny_model, count
):
    dataset = make_dataset()
    batch = collate(
        [dataset[i] for i in range(len(dataset))], dataset.tokens, token_types=dataset.token_types
    )
    extra = {"num_items_in_batch": labelled_count(batch)} if count else {}

    tiny_model.zero_grad()
    reference = tiny_model(**batch, **extra).loss
    reference.backward()
    reference_grads = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]

    tiny_model.zero_grad()
    loss, outputs = labelled_only_loss(tiny_model, batch, extra.get("num_items_in_batch"))
    loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    tiny_model.zero_grad()

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert len(grads) == len(reference_grads)
    assert all(
        torch.allclose(g, r, rtol=1e-4, atol=1e-7) for g, r in zip(grads, reference_grads, strict=True)
    )
    # Only the positions that predict a label were projected onto the vocabulary.
    assert outputs.logits.shape == (labelled_count(batch), tiny_model.config.text_config.vocab_size)
    assert outputs.logits.shape[0] < batch["input_ids"].numel() / 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_liger_is_off_on_cpu_unless_asked():
    assert not liger_active(Recipe())
    assert liger_active(Recipe(use_liger_kernel=True))
    assert not liger_active(Recipe(use_liger_kernel=False))
