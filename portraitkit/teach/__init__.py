"""The course's science, also used as measurement by prep and pick: the selfie-distance model
(`lens`, drawn by `lens_plots`, applied to a photo by `lens_warp`) and the photo-problem measures
(`diagnose`) with their simulations (`degrade`). Import a module, e.g.
`from portraitkit.teach import lens`."""
