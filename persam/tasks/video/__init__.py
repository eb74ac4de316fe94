"""Video object segmentation with PerSAM / PerSAM-F (DAVIS 2017 semi-supervised protocol).

`policy` (the `video` config group: official or tracked), `segmenter` (the per-frame algorithm
on the paper components), `outputs` (label PNGs, overlays), `task` (one runner unit per
sequence). J&F lives in `persam.metrics.video`; the entry point is `python -m persam.video`.
"""
