"""Example workloads and the demo: trained models, data splits and benchmark fixtures that apps/,
benchmarks/ and tests/ import. The library (snncompiler/) never imports this package."""
