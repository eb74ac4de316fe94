"""The paper, one file per component (PerSAM, Zhang et al. 2023).

`encoder` (SAM's frozen image encoder behind the embedding `cache`) -> `location_prior`
(target embedding, similarity map, positive/negative points) -> `guided_attention` and
`semantic_prompt` (installed on SAM's decoder by `decoder`) -> `refine` (the one decode call and
the cascaded post-refinement) -> `scale_weights` (PerSAM-F's fit, section 3.2; speed-ups in
`fit_backends/`) -> `method` (`PerSAM`, `PerSAMF`: `learn` / `segment`).

GF-SAM (Zhang et al. 2024) beside it: `gf_sam` (`GFSAM`, the same `learn` / `segment`) on
`gf_sam_graph` (its stages) and `features` (SAM's or DINOv2's tokens).
"""
