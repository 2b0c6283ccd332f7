"""Known-harmless notices of the libraries underneath, silenced only around the calls that raise them.

A learner who sees a pink box reading "open an issue" after an ordinary step cannot tell it from
a real problem. Each notice silenced here is named with the reason it is harmless; anything else
the libraries say, and everything said outside these calls, still reaches the learner.
"""

from __future__ import annotations

import contextlib
import logging

# Logger name -> fragments of messages known to be harmless where `quiet()` is used:
HARMLESS = {
    # The pipelines' image processors are not used to train or sample; the PIL one is the fallback.
    "transformers": ("requires torchvision (not installed)",),
    # diffusers warns on every dtype cast of a model, also when no module needs to stay in fp32;
    # and on loading a LoRA without text-encoder layers (portraitkit's default) into the pipeline.
    "diffusers": ("that should be kept in float32: [].", "No LoRA keys associated to"),
}
# The libraries whose own logging module gives their root logger a handler.
CONFIGURED = {"diffusers", "transformers"}


class _Harmless(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextlib.contextmanager
def quiet():
    """Drop the HARMLESS notices logged inside the block; everything else still shows."""
    import importlib

    filters = []
    for name, fragments in HARMLESS.items():
        harmless = _Harmless(fragments)
        if name in CONFIGURED:
            importlib.import_module(f"{name}.utils.logging").get_logger(name)  # gives the root logger its handler
        # diffusers and transformers log through child loggers (diffusers.loaders.peft...) to the
        # handler of their root logger: a filter there sees every record, one on the logger would
        # not. bitsandbytes' logger has no handler (Python's last resort prints its records).
        logger = logging.getLogger(name)
        for where in (logger, *logger.handlers):
            where.addFilter(harmless)
            filters.append((where, harmless))
    try:
        yield
    finally:
        for where, harmless in filters:
            where.removeFilter(harmless)
