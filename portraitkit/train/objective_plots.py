"""What the masked loss changes, drawn for notebook 04: the mask over a training crop, and where a
step's loss comes from with and without it (`objective.masked_loss`, the function training calls)."""

from __future__ import annotations


def masked_loss_maps(image, mask, latent_size: int, background_weight: float = 0.0, seed: int | None = 0) -> dict:
    """Each latent pixel's share of one sample's loss, without and with the mask, for one error
    field of the latents' shape, the same in both (random from `seed`; seed None: the same error
    everywhere, so only the mask shapes the maps): {"plain", "masked", "latent_mask"}, each
    (latent_size, latent_size) as numpy, the shares summing to 1."""
    import numpy as np
    import torch

    from portraitkit.train.objective import latent_mask, masked_loss

    pixels = torch.from_numpy(np.asarray(mask.convert("L").resize(image.size), dtype=np.float32) / 255.0)[None, None]
    small = latent_mask(pixels > 0.5, latent_size)
    if seed is None:
        error = torch.ones(1, 4, latent_size, latent_size)
    else:
        error = torch.randn(1, 4, latent_size, latent_size, generator=torch.Generator().manual_seed(seed))
    maps = {}
    for name, weights in (("plain", None), ("masked", small)):
        # The loss is a weighted sum of squared errors, so each pixel's share is read off the
        # library's own loss by its gradient: d loss / d prediction = 2 x weight x error.
        prediction = error.clone().requires_grad_(True)
        loss = masked_loss(prediction, torch.zeros_like(error), weights, background_weight)[0]
        loss.backward()
        maps[name] = (prediction.grad * error / 2 / loss.detach()).sum(dim=1)[0].numpy()
    maps["latent_mask"] = small[0, 0].numpy()
    return maps


def masked_loss_figure(image, mask, latent_size: int | None = None, background_weight: float = 0.0):
    """Three panels: the crop with the mask over it, the loss map without the mask, and with it."""
    import numpy as np
    from matplotlib.figure import Figure

    from portraitkit.core.pictures import as_picture  # drawn as a picture when a notebook cell returns it

    latent_size = latent_size or image.width // 8
    # An even error: a random one's squares vary tenfold from pixel to pixel, which hid the
    # unmasked map's message (every pixel counts) under a few bright specks on a black field.
    maps = masked_loss_maps(image, mask, latent_size, background_weight, seed=None)
    even = 1 / maps["plain"].size  # each pixel's share when all count the same
    figure = Figure(figsize=(11, 3.8), dpi=100)
    axes = figure.subplots(1, 3)
    tinted = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    face = np.asarray(mask.convert("L").resize(image.size), dtype=np.float64)[..., None] / 255
    axes[0].imshow(tinted * (1 - 0.45 * face) + np.array([0.15, 0.4, 1.0]) * 0.45 * face)
    axes[0].set_title("the mask prep drew (blue)")
    top = max(maps["plain"].max(), maps["masked"].max()) / even
    for ax, name, title in ((axes[1], "plain", "loss without the mask"),
                            (axes[2], "masked", f"with it (background weight {background_weight:g})")):
        shown = ax.imshow(maps[name] / even, cmap="viridis", vmin=0, vmax=top)
        ax.set_title(title)
    figure.colorbar(shown, ax=axes[1:], label="a latent pixel's share of the loss\n(1 = the share if all counted the same)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return as_picture(figure)
