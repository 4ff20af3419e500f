"""Interpretable concept-bottleneck diagnosis of choroid tumours (Wu et al., Nat. Commun. 2025) on the real
fundus photograph, compiled to a spiking network; run with ``python -m apps.medical.concept_classifier``."""
