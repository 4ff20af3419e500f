"""Sparse-convolution example apps: ``python -m apps.sparse_conv.sdconv``."""
