"""IR → files: the spiking ONNX artifact (onnx_export)."""
