"""Sparse convolution app: learnable-threshold weight masks × spike sparsity (``python -m apps.sparse_conv``)."""
