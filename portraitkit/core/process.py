"""What a process started for one command sets for itself: the command line, the GPU check and the
benchmarks (which measure what the command line does), never a notebook that imports the library."""

from __future__ import annotations

import gc


def as_a_command() -> None:
    """Python's collector, for a process that imports torch, diffusers and transformers: millions of
    objects that live as long as the process. At the default thresholds (700, 10, 10) the collector
    walks all of them again and again while they are imported: in a tiny `portraitkit demo`, 1,755
    collections, 9 of them full, 1.5 s; young collections every 10,000 new objects instead: 124, one
    full, 0.75 s (`python benchmarks/bench_collector.py`, medians of 3 runs). Garbage is still
    collected, in fewer and larger young collections."""
    gc.set_threshold(10_000, 10, 10)
