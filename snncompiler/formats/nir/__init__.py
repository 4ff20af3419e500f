"""NIR (the Neuromorphic Intermediate Representation): :mod:`.reader` and :mod:`.writer`."""
