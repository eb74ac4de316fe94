"""Video object segmentation with PerSAM / PerSAM-F (DAVIS 2017 semi-supervised protocol).

`policy` (the `video` config group: official or tracked), `segmenter` (the per-frame algorithm
on the paper components), `metrics` (J&F), `outputs` (label PNGs, overlays), `task` (one
runner unit per sequence), `app` (`python -m persam.video`).
"""
