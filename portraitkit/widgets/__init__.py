"""ipywidgets panels for the course notebooks, one module per notebook beside what it shows.

Import a panel from its module, e.g. `from portraitkit.widgets.lens import LensPanel`:

| module | panels | notebook |
|---|---|---|
| `widgets.panel` | `Panel` (what every panel shares: display, status line, thumbnails, figures) | all |
| `widgets.lens` | `LensPanel`: distance, focal length and position sliders over the head model | 01 |
| `widgets.processing` | `ProcessingPanel`: light and processing problems on a photo, and their diagnosis | 02 |
| `widgets.photos` | `UploadPanel` (local Jupyter uploads), `OverridePanel` (use or leave out each photo) | 03 |
| `widgets.training` | `TrainPanel` (settings and their T4 cost), `LossMonitor` (the live loss curve) | 04 |
| `widgets.sampling` | `StylePanel`: styles, LoRA strength, images per style, seed | 05 |
| `widgets.picks` | `PicksPanel`: the ranked gallery, ticks saved at once, the export | 06 |
"""
