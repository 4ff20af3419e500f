"""One-shot organ segmentation with a cosine-mixture head (Cui et al., TMI 2021), compiled to a spiking network."""
