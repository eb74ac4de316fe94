"""Training the embedded SAM (`python -m persam.train`) on the synthetic one-shot world.

* :mod:`persam.training.data` — pre-rendered scenes of the *train* identities, and batches of
  scene pairs (two scenes of the same identity) in SAM's input frame; `ScenePairData`, the
  Lightning data module that serves them.
* :mod:`persam.training.prompts` — SAM-style prompt sampling from the ground truth: points,
  jittered boxes, error-region correction points, previous-prediction mask prompts.
* :mod:`persam.training.identity` — the identity-matching loss on the encoder features that
  PerSAM's location prior relies on (the mask losses are :mod:`persam.model.losses`, shared with
  PerSAM-F; the decoder guidance is PerSAM's own :mod:`persam.model.decoder`).
* :mod:`persam.training.module` — the Lightning module that trains a `Sam` with all of them.
* :mod:`persam.training.record` — `TrainingRecord`, the callback that saves the checkpoint and
  its record (`embedded_sam.json` / `.md`) and exports them.
* :mod:`persam.training.memory` — the memory estimate checked before the scenes are rendered.
"""
