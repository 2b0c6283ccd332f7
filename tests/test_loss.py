"""objective.loss_of_draw, the loss every training step minimises, against the formula written out
(epsilon and v-prediction, with and without min-SNR weighting), on the tiny base."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny():
    from portraitkit.models.bases import load_pipeline

    return load_pipeline("tiny-sd")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [5.0, None])
def test_loss_of_draw_is_the_written_out_objective(tiny, prediction_type, gamma):
    import torch
    from diffusers import DDPMScheduler

    from portraitkit.train.cache import encode_text
    from portraitkit.models.conditioning import unet_conditioning
    from portraitkit.train.objective import loss_of_draw

    scheduler = DDPMScheduler.from_config(tiny.scheduler.config, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(3)
    size = tiny.unet.config.sample_size
    x0 = torch.randn(2, 4, size, size, generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([20, 900])  # a nearly clean and a nearly pure-noise draw: SNR far above and below gamma
    text = encode_text(tiny, ["a photo of sks person", "a photo of a person"], "cpu")["embeds"]
    with torch.no_grad():
        loss = loss_of_draw(tiny.unet, scheduler, x0, eps, t, unet_conditioning({"embeds": text}, size * 8, torch.float32), gamma)
        a = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        predicted = tiny.unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=text).sample
    target = a.sqrt() * eps - (1 - a).sqrt() * x0 if prediction_type == "v_prediction" else eps
    snr = (a / (1 - a)).flatten()
    if gamma is None:
        weight = torch.ones(2)
    else:
        weight = torch.clamp(snr, max=gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    expected = weight * ((predicted - target) ** 2).mean(dim=(1, 2, 3))
    assert loss.shape == (2,)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-8)
    if gamma is not None and prediction_type == "epsilon":
        assert weight[0] < 0.1 and weight[1] == 1.0  # the easy, low-noise draw is turned down
