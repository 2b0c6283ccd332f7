"""The training objective on its own: the masked loss ignores what it should, caption dropout keeps its rate."""

from __future__ import annotations

import pytest

from portraitkit.train.objective import bare_caption, dropped_captions, latent_mask, masked_loss


def _face_mask(size=64):
    import torch

    mask = torch.zeros(2, 1, size, size)
    mask[0, :, 20:40, 24:44] = 1  # a face in the middle
    mask[1, :, 4:20, 4:16] = 1  # a small one near a corner
    return mask


def test_mask_at_latent_resolution_keeps_every_face_block_and_grows_one_latent_pixel():
    import torch

    pixels = torch.zeros(1, 1, 64, 64)
    pixels[0, 0, 17, 30] = 1  # a single face pixel in latent block (2, 3)
    small = latent_mask(pixels, 8)
    assert small.shape == (1, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[1:4, 2:5] = 1  # the block and its 8 neighbours
    assert torch.equal(small[0, 0], expected)
    assert latent_mask(pixels, 8, dilation=0)[0, 0].nonzero().tolist() == [[2, 3]]


def test_with_background_weight_0_the_background_changes_neither_loss_nor_gradient():
    import torch

    torch.manual_seed(0)
    mask = latent_mask(_face_mask(), 8)
    target = torch.randn(2, 4, 8, 8)
    base = torch.randn(2, 4, 8, 8)
    outside, inside = (mask == 0).expand_as(base), (mask == 1).expand_as(base)
    assert outside.any() and inside.any()

    def loss_and_grad(prediction, weight=0.0):
        prediction = prediction.clone().requires_grad_(True)
        loss = masked_loss(prediction, target, mask, weight).sum()
        loss.backward()
        return loss.detach(), prediction.grad

    loss, grad = loss_and_grad(base)
    changed_outside = base + 5 * torch.randn_like(base) * outside
    loss_out, grad_out = loss_and_grad(changed_outside)
    assert torch.equal(loss, loss_out) and torch.equal(grad, grad_out)
    assert torch.count_nonzero(grad * outside) == 0  # the background gets no gradient at all

    changed_inside = base + 5 * torch.randn_like(base) * inside
    loss_in, grad_in = loss_and_grad(changed_inside)
    assert abs(loss_in - loss) > 1e-3 and not torch.allclose(grad_in, grad)

    # a background weight above 0 lets the background count again, and 1 is the plain MSE
    assert not torch.equal(loss_and_grad(changed_outside, 0.2)[0], loss_and_grad(base, 0.2)[0])
    plain = (base - target).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(masked_loss(base, target, mask, 1.0), plain)
    assert torch.allclose(masked_loss(base, target, None), plain)


def test_a_small_face_trains_as_strongly_as_a_large_one():
    import torch

    mask = latent_mask(_face_mask(), 8)
    target = torch.zeros(2, 4, 8, 8)
    prediction = torch.ones(2, 4, 8, 8)  # the same error everywhere
    assert torch.allclose(masked_loss(prediction, target, mask), torch.ones(2))


@pytest.mark.parametrize("probability", [0.05, 0.3])
def test_caption_dropout_rate_is_honoured_and_reproducible(probability):
    draws = [dropped_captions(seed=3, micro_index=k, count=2, probability=probability) for k in range(4000)]
    rate = sum(map(sum, draws)) / 8000
    assert abs(rate - probability) < 4 * (probability * (1 - probability) / 8000) ** 0.5  # within 4 standard errors
    assert draws[1234] == dropped_captions(3, 1234, 2, probability)  # the same step draws the same, as after a resume
    other_seed = [dropped_captions(seed=4, micro_index=k, count=2, probability=probability) for k in range(4000)]
    assert other_seed != draws  # another seed, other draws
    assert dropped_captions(3, 5, 2, 0.0) == [False, False]


def test_bare_caption_is_the_trigger_phrase():
    assert bare_caption("a photo of sks person, warm light, close-up") == "a photo of sks person"
    assert bare_caption("a photo of sks person") == "a photo of sks person"
