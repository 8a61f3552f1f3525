"""Data: image decoding, the unpaired dataset and its loader, the synthetic domain pair."""
