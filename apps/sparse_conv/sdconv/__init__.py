"""SD-Conv: learnable-threshold masks on static and dynamic convolutions, on real MNIST and
digits (``python -m apps.sparse_conv.sdconv``)."""
