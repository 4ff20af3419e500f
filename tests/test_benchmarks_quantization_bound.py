"""Smoke test of benchmarks/quantization_bound.py: rounding every ReLU of the ResNet-18 agreement
workload to T + 1 levels costs agreement at small T and almost none at very large T."""

from benchmarks import quantization_bound


def test_rounding_reference_converges_to_the_ann(capsys):
    result = quantization_bound.measure(samples=32, steps=[2, 65536])
    assert result["relu_sites"] == 17  # stem, 8 BasicBlocks × 2
    assert len(result["rows"]) == 2 * len(quantization_bound.THRESHOLDS)
    for row in result["rows"]:
        coarse, fine = row["agreement"]["2"], row["agreement"]["65536"]
        assert coarse < fine, row
    best = max(row["agreement"]["65536"] for row in result["rows"] if row["theta"] == "max")
    assert best >= 0.9  # with θ = the max, only test activations beyond the calibration max are cut
