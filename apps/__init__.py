"""Example workloads, each trained in torch, exported to ONNX and compiled with snncompiler:
``python -m apps.medical.<name>`` (one package per medical paper, see apps/medical),
``python -m apps.finance.stock_movement``, ``python -m apps.sparse_conv.sdconv``."""
