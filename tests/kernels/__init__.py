"""Tests of the fused neuron kernels (snncompiler.kernels)."""
