"""Where a run's minutes go: seconds per phase (load, cache, steps, validation, scoring,
checkpoints, save, plots), which `train` records in the run's config.json as `seconds_by_phase`."""

from __future__ import annotations

import contextlib
import time


class PhaseClock:
    """Seconds per phase of a run (load, cache, steps, validation, scoring, checkpoints, save,
    plots), so a user sees where a run's minutes go; config.json records them."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._began: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self._began[phase] = time.perf_counter()

    def stop(self, phase: str) -> None:
        began = self._began.pop(phase, None)
        if began is not None:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - began, 3)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        self.start(phase)
        try:
            yield
        finally:
            self.stop(phase)

    @contextlib.contextmanager
    def pause(self, phase: str):
        """`phase` does not count inside the block (the training steps, while validation renders)."""
        self.stop(phase)
        try:
            yield
        finally:
            self.start(phase)
