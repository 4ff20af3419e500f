"""Fine-tuning a converted model: the trainable module computes what the spiking runtime runs,
training at T=1 helps where conversion is weakest, the held-out guard, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import Residual

import snncompiler as snnc
from examples.workloads import export_onnx
from snncompiler.model import first_output
from snncompiler.train import run_steps
from snncompiler.train.finetune import GraphNet, finetune


@pytest.fixture(scope="module")
def converted(small_digits_cnn):
    path, train, test = small_digits_cnn
    return snnc.compile(str(path), train.x[:256], timesteps=4, quiet=True), train, test, path


@pytest.mark.parametrize("maxpool", ["rate", "output", "input"])
def test_trainable_module_computes_what_the_runtime_runs(converted, maxpool, tmp_path):
    model, train, _, path = converted
    if maxpool != "rate":
        model = snnc.compile(str(path), train.x[:256], timesteps=4, quiet=True, maxpool=maxpool)
    x = torch.from_numpy(train.x[:64])
    with torch.no_grad():
        ours = run_steps(GraphNet(model.graph.copy()), x, 6)
    runtime = model.runner(backend="reference").run_steps(x, 6)
    torch.testing.assert_close(ours, runtime, atol=1e-4, rtol=1e-4)


def test_training_step_on_the_rate_pool_kernel_equals_the_torch_composition(converted, monkeypatch):
    """The digits CNN's 2×2 rate max pools run on the C++ kernel while fine-tuning: the loss and
    every parameter's gradient of a training step are bit for bit those of the torch
    composition the step ran before (the kernel switched off)."""
    import importlib

    from snncompiler.kernels import event
    from snncompiler.train import tet_loss

    finetune_module = importlib.import_module(
        "snncompiler.train.finetune"
    )  # the package exports a function of that name

    if not event.available():
        pytest.skip("event extension not built")
    model, train, _, _ = converted
    x, y = torch.from_numpy(train.x[:32]), torch.from_numpy(train.y[:32]).long()
    calls = []

    def counted(t):
        calls.append(tuple(t.shape))
        return event.rate_max_pool_2x2(t)

    def step():
        torch.manual_seed(0)
        net = GraphNet(model.graph.copy())
        loss = tet_loss(run_steps(net, x, 4), y)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}

    monkeypatch.setattr(finetune_module, "rate_max_pool_2x2", counted)
    fast = step()
    assert len(calls) == 2  # both pools of the network ran on the kernel
    monkeypatch.setattr(finetune_module, "rate_max_pool_2x2", lambda t: None)
    composed = step()
    assert torch.equal(fast[0], composed[0]) and fast[1].keys() == composed[1].keys()
    assert all(torch.equal(fast[1][k], composed[1][k]) for k in fast[1])


@pytest.mark.parametrize(
    "options",
    [dict(calibration="advanced", iterations=5), dict(reset="hard"), dict(reset="hard", channelwise=True)],
    ids=["potential-offsets", "hard-reset-gain", "hard-reset-gain-per-channel"],
)
def test_trainable_module_keeps_calibration_offsets_and_gains(converted, options):
    """A model whose neurons carry potential calibration's v_init or hard reset's input gain trains
    in the form it runs: the module's forward equals the runtime's."""
    _, train, _, path = converted
    model = snnc.compile(str(path), train.x[:64], timesteps=4, quiet=True, **options)
    key = "v_init" if "calibration" in options else "gain"
    assert any(key in n.params for n in model.graph.find("neuron")), f"the compile left no {key} to test"
    if options.get("channelwise"):  # one gain per channel: the module must broadcast it along axis 1
        assert any(n.params["gain"].numel() > 1 for n in model.graph.find("neuron") if "gain" in n.params)
    x = torch.from_numpy(train.x[:32])
    with torch.no_grad():
        ours = run_steps(GraphNet(model.graph.copy()), x, 4)
    torch.testing.assert_close(ours, model.runner(backend="reference").run_steps(x, 4), atol=1e-4, rtol=1e-4)


def test_trainable_module_on_residual_lif_per_channel(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(Residual(), (1, 8, 8), tmp_path / "r.onnx")
    x = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=4, quiet=True, neuron="lif", tau=4.0, channelwise=True)
    with torch.no_grad():
        ours = run_steps(GraphNet(model.graph.copy()), torch.from_numpy(x), 5)
    torch.testing.assert_close(
        ours, model.runner(backend="reference").run_steps(torch.from_numpy(x), 5), atol=1e-4, rtol=1e-4
    )


def test_finetuning_at_one_step_beats_conversion_there(converted):
    model, train, test, _ = converted
    before = model.evaluate(test.x, test.y, [1])["snn_accuracy"]["1"]
    tuned = finetune(model, (train.x, train.y), timesteps=1, epochs=10, progress=False)
    note = tuned.report["finetune"]
    assert note["kept"] and note["val_accuracy_after"] > note["val_accuracy_before"]
    after = tuned.evaluate(test.x, test.y, [1])["snn_accuracy"]["1"]
    assert after >= before + 0.02, (before, after)  # measured on test data fine-tuning never saw
    assert tuned.options["timesteps"] == 1
    thetas = [n.params["theta"] for n in tuned.graph.find("neuron")]
    assert any(not torch.equal(a, b.params["theta"]) for a, b in zip(thetas, model.graph.find("neuron")))


def test_a_model_that_does_not_improve_comes_back_unchanged(converted):
    model, train, _, _ = converted
    same = finetune(model, (train.x, train.y), timesteps=2, epochs=1, lr=1e-12, progress=False)
    assert not same.report["finetune"]["kept"]
    for a, b in zip(same.graph.nodes, model.graph.nodes):
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    forced = finetune(model, (train.x, train.y), timesteps=2, epochs=1, lr=1e-12, keep_if_better=False, progress=False)
    assert forced.report["finetune"]["kept"] and forced.options["timesteps"] == 2


def _snnc(*args):
    return subprocess.run([sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_finetune_and_its_errors(converted, tmp_path):
    from snncompiler.data import save_npz

    model, train, test, path = converted
    artifact = tmp_path / "m.snn.onnx"
    model.save(artifact)
    save_npz(tmp_path / "train.npz", train.x[:400], train.y[:400])
    save_npz(tmp_path / "val.npz", test.x[:200], test.y[:200])
    r = _snnc(
        "finetune",
        artifact,
        "--data",
        tmp_path / "train.npz",
        "--val",
        tmp_path / "val.npz",
        "-o",
        tmp_path / "ft.snn.onnx",
        "--timesteps",
        "1",
        "--epochs",
        "3",
        "--keep-always",
    )
    assert r.returncode == 0, r.stderr
    assert "held-out accuracy at T=1 on 200 samples" in r.stdout
    assert snnc.load(tmp_path / "ft.snn.onnx").report["finetune"]["epochs"] == 3
    gated = snnc.compile(str(path), train.x[:64], timesteps=4, quiet=True, maxpool="gated")
    gated.save(tmp_path / "gated.snn.onnx")
    for src, message in [
        (path, "compile it with `snnc compile` before fine-tuning"),
        (tmp_path / "gated.snn.onnx", "gated max pooling"),
    ]:
        r = _snnc("finetune", src, "--data", tmp_path / "train.npz", "-o", tmp_path / "x.snn.onnx")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ann_teacher_is_the_onnx_model(converted):
    """The teacher of ``finetune(distill=...)`` is the ANN the model was compiled from (onnxruntime is
    the oracle), and for a loaded artifact, which does not carry it, the artifact's own ANN mode."""
    import onnxruntime as ort

    from snncompiler.train.finetune import ann_teacher

    model, _, test, path = converted
    x = test.x[:64]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(np.asarray(ann_teacher(model)(torch.as_tensor(x))), expected, rtol=1e-4, atol=1e-4)
    loaded = snnc.compile(str(path), x, timesteps=4, quiet=True)
    loaded.ann_graph = None
    own = np.asarray(ann_teacher(loaded)(torch.as_tensor(x)))
    np.testing.assert_allclose(own, first_output(loaded.ann(x)), rtol=1e-5, atol=1e-5)


def test_finetune_with_distillation_records_it(converted):
    model, train, _, _ = converted
    tuned = finetune(model, (train.x[:200], train.y[:200]), timesteps=2, epochs=1, distill=0.5, progress=False)
    note = tuned.report["finetune"]
    assert note["distill"] == 0.5 and note["temperature"] == 4.0
