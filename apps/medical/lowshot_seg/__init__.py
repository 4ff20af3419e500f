"""One-shot tissue segmentation with a cosine-mixture head (Cui et al., TMI 2021) on the real MNI152 MRI, compiled with snnc."""
