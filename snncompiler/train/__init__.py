"""Direct training (TET) on the same kernels and the same artifact format as conversion.

import snncompiler as snnc
from snncompiler.train import LIF

net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), LIF(), ...,
                    nn.Flatten(), nn.Linear(64, 10))          # LIF where the ANN has a ReLU
snnc.train.fit(net, (x, y), timesteps=4, epochs=30)           # TET loss, Adam + cosine
snnc.train.evaluate(net, (x_test, y_test), timesteps=[1, 2, 4, 8])
snnc.train.export(net, "net.snn.onnx", input_shape=(1, 8, 8))  # snnc eval / snnc.load read it
snnc.train.finetune("model.snn.onnx", (x, y), timesteps=2)    # a converted model, trained at T=2
snnc.train.train_onnx("model.onnx", (x, y), timesteps=[1, 4], init="random")  # an ONNX architecture (`snnc train`)
snnc.train.use_qcfs(ann, levels=4)                            # a quantization-aware ANN to convert at T ≈ 4
"""

from __future__ import annotations

from .direct import train_onnx
from .finetune import GraphNet, finetune
from .loss import sdt_loss, tet_loss
from .lowering import export, to_compiled
from .neuron import LIF, neurons, run_steps
from .qcfs import QCFS, use_qcfs
from .trainer import evaluate, fit

__all__ = [
    "LIF",
    "run_steps",
    "neurons",
    "tet_loss",
    "sdt_loss",
    "fit",
    "evaluate",
    "export",
    "to_compiled",
    "finetune",
    "GraphNet",
    "train_onnx",
    "QCFS",
    "use_qcfs",
]
