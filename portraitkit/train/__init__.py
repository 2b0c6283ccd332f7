"""The training stage. Open `loop.py` first: the settings and the loop, top to bottom. Beside it:
the data read and encoded once (`cache`), what a step optimises (`objective`), which models sit
on the GPU when (`placement`), resumable checkpoints (`checkpoints`), validation and the likeness
curve (`validate`), the processes of a multi-GPU run (`launch`), seconds per phase (`phases`)."""

from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import train

__all__ = ["TrainConfig", "train"]
