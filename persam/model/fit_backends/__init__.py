"""Opt-in speed-ups of PerSAM-F's fit (`persam.model.scale_weights`): the same loss and Adam
steps computed faster. `fused`: the three masks' decoder pass done once, the mix fused into one
kernel; `taylor`: the loss expanded around the current weights inside a trust box."""
