"""GIRNet-style pathological image registration (Liu & Gu, MICCAI 2023) on the real MNI152 MRI, compiled to a
spiking network; run with ``python -m apps.medical.registration``."""
