"""Imaging-plane pretext tasks (Zhang et al., MedIA 2024) on the real MNI152 MRI, compiled with snnc."""
