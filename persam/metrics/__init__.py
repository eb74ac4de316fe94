"""Scores: `image` (IoU, boundary IoU, instances, few-shot mIoU / FB-IoU), `video` (J&F)."""
