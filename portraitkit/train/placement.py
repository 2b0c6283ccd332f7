"""Which of a pipeline's models sit on the GPU in each phase of a run; the rest wait in RAM.

A T4 cannot hold SDXL's UNet beside its VAE encoding 1024 px images, nor beside the text
encoders it no longer needs once captions are encoded. So each phase names the models it runs:
caching needs the VAE and the text encoders, the training loop the UNet (and the text encoders
it trains), validation the UNet with the text encoders for a moment, then the VAE. On a CPU
every move is a no-op.
"""

from __future__ import annotations

import contextlib

MODELS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")  # FLUX.2 has a transformer, SD a UNet


class Placement:
    """The set of a pipeline's models on `device`; `on(...)` changes it for one phase."""

    def __init__(self, pipe, device):
        self.pipe, self.device = pipe, device
        self.here: frozenset[str] = frozenset(name for name in MODELS if self._model(name) is not None
                                              and self._model(name).device.type == getattr(device, "type", str(device)))

    def _model(self, name: str):
        return getattr(self.pipe, name, None)

    def _place(self, names) -> None:
        import torch

        # A bitsandbytes-quantised model was loaded onto the GPU and cannot move: it stays there.
        wanted = frozenset(n for n in names if self._model(n) is not None) | self._pinned()
        # Leaving first, then arriving: the GPU never holds both sets at once.
        for name in sorted(self.here - wanted):
            self._model(name).to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand freed memory back before the next models arrive
        for name in sorted(wanted - self.here):
            self._model(name).to(self.device)
        self.here = wanted

    def _pinned(self) -> frozenset:
        return frozenset(n for n in MODELS if getattr(self._model(n), "is_quantized", False))

    @contextlib.contextmanager
    def on(self, *names: str):
        """Exactly `names` on the device inside the block; the previous set again after it."""
        before = self.here
        self._place(names)
        try:
            yield
        finally:
            self._place(before)

    def keep(self, *names: str) -> None:
        """Exactly `names` on the device from now on (the long phase: the training loop)."""
        self._place(names)


def release(placement: Placement | None, error: BaseException) -> None:
    """Hand the GPU back after a run failed or was interrupted. A notebook keeps the exception, and
    with it its traceback's frames and everything they hold: the models, the optimizer's state, the
    activations of a half-done step. A retry in the same notebook would then run out of memory on
    a T4. So the models go back to RAM and the finished frames forget their variables (the
    traceback's text stays); whatever is then unreferenced is freed."""
    import gc
    import traceback

    import torch

    try:
        if placement is not None:
            placement.keep()  # every model off the device
    except Exception:  # a broken CUDA context cannot move anything: the run's own error is the one to show
        pass
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
