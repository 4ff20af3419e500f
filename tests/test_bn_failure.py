"""The BN failure mode: a deep VGG trained with BN collapses under plain max-threshold conversion
at T=16, and advanced calibration recovers it to within 3 points of its ANN."""

from __future__ import annotations

import torch

import snncompiler as snnc
from examples.workloads import bn_failure_workload, evaluate, export_onnx


def test_advanced_calibration_repairs_bn_collapse(tmp_path):
    torch.set_num_threads(2)
    w = bn_failure_workload()
    ann = 100 * evaluate(w.model, w.test)
    path = export_onnx(w.model, w.input_shape, tmp_path / "deep_vgg_bn.onnx")
    plain = snnc.compile(path, w.calib, threshold="max").evaluate(w.test.x, w.test.y, [16])
    advanced = snnc.compile(path, w.calib, timesteps=16, calibration="advanced", quiet=True).evaluate(
        w.test.x, w.test.y, [16]
    )
    plain16, advanced16 = 100 * plain["snn_accuracy"]["16"], 100 * advanced["snn_accuracy"]["16"]
    assert ann > 55, ann  # the ANN learned the task (10 classes: chance is 10%)
    assert plain16 < 50, (plain16, ann)
    assert advanced16 >= ann - 3, (advanced16, ann)
