"""Constants shared by the data, training and evaluation layers (one definition each)."""

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips (HF convention for "no target")
