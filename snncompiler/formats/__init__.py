"""File formats, each reader beside its writer: ONNX in and the spiking-ONNX artifact out
(:mod:`.onnx`), NIR both ways (:mod:`.nir`), and :mod:`.artifact`, the one description of the
artifact's domain, versions and metadata. Readers return data; the package face builds objects."""
