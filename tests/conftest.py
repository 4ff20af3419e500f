"""Before any test module imports triton (SpikingJelly's modules do, at import time): on a
machine without a GPU, Triton kernels run through the interpreter. The decorator reads
TRITON_INTERPRET when a kernel is defined, so it must be set before the first import."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
