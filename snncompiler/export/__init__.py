"""IR → files: the spiking ONNX artifact (onnx_export) and NIR (nir_export)."""
