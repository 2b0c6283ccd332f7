"""Nothing reaches the network that the user did not ask for.

Two libraries underneath look up hosts on their own, measured with an audit hook on
`socket.getaddrinfo` during the offline demo:

- **bitsandbytes** (0.50, imported by diffusers whenever it is installed): on a CPU with
  AVX512-BF16 (Zen 4, Sapphire Rapids and newer), its import asks the `kernels` package for a
  4-bit CPU kernel, which checks its publisher on huggingface.co and downloads it: code fetched
  and run at import, and offline a notice on stderr. portraitkit never runs 4-bit layers on a CPU
  (NF4 is for the GPU), so while bitsandbytes imports, `kernels` is made unimportable and
  bitsandbytes takes its own fallback, as it does where `kernels` is not installed. Set
  PORTRAITKIT_HUB_KERNELS=1 to let it fetch the kernel after all.
- **datasets** counts every `load_dataset` of a packaged builder with a request to
  s3.amazonaws.com (`increase_load_count`), also for a local `imagefolder`: `local_datasets()`
  turns that off around the call.

What does reach the network: a base model named by its Hugging Face id (`--base sd15`, `sdxl`,
`klein4b` or any repo id), downloaded by diffusers the first time, and nothing else.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys

OPT_IN = "PORTRAITKIT_HUB_KERNELS"


class _Loader(importlib.abc.Loader):
    """Runs bitsandbytes' own loader with `kernels` unimportable, its fallback's notice quiet."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        hidden = sys.modules.get("kernels")
        sys.modules["kernels"] = None  # `from kernels import get_kernel` raises ImportError: bitsandbytes falls back
        notices = logging.getLogger("bitsandbytes.backends.cpu.ops")
        level = notices.level
        notices.setLevel(logging.ERROR)  # "Failed to load CPU gemm_4bit_forward ...": the fallback, as intended
        try:
            self.loader.exec_module(module)
        finally:
            notices.setLevel(level)
            if hidden is None:
                sys.modules.pop("kernels", None)
            else:
                sys.modules["kernels"] = hidden


class _LocalBitsandbytes(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as the other finders do, and loads it without the Hub kernel."""

    def __init__(self):
        self.finding = False

    def find_spec(self, name, path=None, target=None):
        if name != "bitsandbytes" or self.finding:
            return None
        self.finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def keep_bitsandbytes_local() -> None:
    """Install the finder (once, before bitsandbytes is imported; `import portraitkit` does it)."""
    if os.environ.get(OPT_IN, "").lower() in ("1", "true", "yes"):
        return
    if "bitsandbytes" in sys.modules or any(isinstance(finder, _LocalBitsandbytes) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _LocalBitsandbytes())


@contextlib.contextmanager
def local_datasets():
    """`datasets.load_dataset` of a local folder without its download counter's request."""
    from datasets import config

    counting = getattr(config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        config.HF_UPDATE_DOWNLOAD_COUNTS = counting
