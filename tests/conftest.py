"""Shared pytest fixtures: paths to the committed sample data and a real public-domain portrait."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """data/samples: the licence-clean sample photos (see its README.md)."""
    return REPO / "data" / "samples"


@pytest.fixture(scope="session")
def portrait_path() -> Path:
    """matplotlib's public-domain photo of Grace Hopper (US Navy), a real face on every install."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
