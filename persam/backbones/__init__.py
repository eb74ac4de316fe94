"""SAM backbones: the registry and SAM's ViT (`sam`), architecture-from-shapes (`architecture`),
and one file per other family (`mobile_sam`, `efficientvit_sam`, `sam2`, `hf_sam`); `dinov2`: DINOv2
feature encoders (GF-SAM's semantic features)."""
