"""CUDA graphs in the spiking runtime (--cuda-graphs; snncompiler/runtime/cuda_graphs.py).

Without a GPU the runner's side of it (buffers copied in for every new run, state carried from
replay to replay, first and steady chunks, outputs and spike counts read after each replay) runs
against a stand-in for ``torch.cuda.CUDAGraph`` that replays by running the recorded step again
on the captured buffers, and must give, bit for bit, what eager chunks give. The GPU tests at the
end (skipped without CUDA; benchmarks/gpu_session.sh runs them) capture real graphs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snncompiler as snnc
from examples.workloads import DigitsCNN, digits, export_onnx
from snncompiler.data import Dataset
from snncompiler.errors import SnncError
from snncompiler.runtime import cuda_graphs


class ReplayByRerun:
    """A CPU stand-in for :class:`~snncompiler.runtime.cuda_graphs.CudaChunkGraph`. A capture
    runs the step once for the tensors it returns and then puts back the buffers it wrote (a real
    capture runs nothing); a replay runs the step again and writes its results into the returned
    tensors, as a real replay overwrites the captured ones."""

    captures = 0

    def __init__(self, device):
        self.device = device

    def capture(self, step, written):
        saved = [t.clone() for t in written]
        self._step, self._outs = step, step()
        for buffer, value in zip(written, saved):
            buffer.copy_(value)
        ReplayByRerun.captures += 1
        return self._outs

    def replay(self):
        for captured, now in zip(self._outs, self._step()):
            captured.copy_(now)


class FailingCapture(ReplayByRerun):
    def capture(self, step, written):
        raise RuntimeError("operation not permitted when stream is capturing")


class WrongReplay(ReplayByRerun):
    """Replays one output wrong, as a graph that missed a kernel would."""

    def replay(self):
        super().replay()
        self._outs[0].add_(1.0)


@pytest.fixture(scope="module")
def digits_data():
    return digits()


def _compiled(tmp_path, data, **options):
    train, _ = data
    torch.manual_seed(0)
    path = export_onnx(DigitsCNN(width=8), (1, 8, 8), tmp_path / "cnn.onnx")
    return snnc.compile(path, Dataset(train.x[:128]), quiet=True, **options)


def _graph_runner(model, factory=ReplayByRerun, mode="auto", **run_options):
    runner = model.runner(cuda_graphs="off", **run_options)
    runner._graph_factory, runner.cuda_graphs = factory, mode  # as on a GPU, with the stand-in
    return runner


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a replay found wrong would fall back with a warning
@pytest.mark.parametrize(
    "options",
    [{}, {"maxpool": "rate"}, {"population": 2}, {"neuron": "lif", "reset": "hard"}],
    ids=["if", "rate-maxpool", "population", "lif-hard"],
)
def test_replayed_chunks_equal_eager_chunks(tmp_path, digits_data, options):
    model = _compiled(tmp_path, digits_data, **options)
    _, test = digits_data
    eager, graphs = model.runner(cuda_graphs="off"), _graph_runner(model)
    # three batches of one shape (new inputs into the captured buffers), then a smaller one; 36
    # steps in chunks of 8: a first chunk, three steady ones and a shorter last one, each a graph
    batches = [test.x[0:48], test.x[48:96], test.x[96:144], test.x[144:160]]
    previous = None
    for x in batches:
        x = torch.from_numpy(x)
        want = eager.run_steps(x, 36, chunk=8)
        got = graphs.run_steps(x, 36, chunk=8)
        assert torch.equal(want, got)
        if previous is not None and len(previous) == len(want):
            assert not torch.equal(previous, want)  # the batches differ, so stale buffers would show
        previous = want
        assert eager.spike_count == graphs.spike_count
        assert eager.neuron_steps == graphs.neuron_steps
    # batch 1 warms up the first and the last chunk and replays the steady one from its third
    # chunk on; batches 2 and 3 replay all five chunks; the 16-sample batch, a new shape, is batch 1 again
    assert graphs.graph_replays == 2 + 5 + 5 + 2
    means_eager = eager.run(torch.from_numpy(test.x[:48]), 36, checkpoints=[4, 16, 36], chunk=8)
    means_graphs = graphs.run(torch.from_numpy(test.x[:48]), 36, checkpoints=[4, 16, 36], chunk=8)
    for t in (4, 16, 36):
        assert torch.equal(means_eager[t], means_graphs[t])


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("steps", [36, 3])
def test_replayed_chunks_with_presimulation(tmp_path, digits_data, steps):
    """The offset-spike correction (``presim``) runs inside the first chunk, which is captured
    with it; fewer steps than it reads (3 < 4) capture the longer chunk and cut its outputs."""
    model = _compiled(tmp_path, digits_data)
    _, test = digits_data
    eager, graphs = model.runner(cuda_graphs="off", presim=4), _graph_runner(model, presim=4)
    plain = model.runner(cuda_graphs="off")
    for x in (test.x[0:48], test.x[48:96], test.x[96:144]):
        x = torch.from_numpy(x)
        want = eager.run_steps(x, steps, chunk=8)
        assert torch.equal(want, graphs.run_steps(x, steps, chunk=8))
        assert len(want) == steps and not torch.equal(want, plain.run_steps(x, steps, chunk=8))
    assert graphs.graph_replays >= 2


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_replayed_residual_network_with_potential_calibration(tmp_path, digits_data):
    """Residual adds of two neurons, average pooling, a classifier, and a per-neuron v_init (as
    potential calibration sets it: a parameter the first chunk reads): replays equal eager chunks."""
    from conftest import Residual

    train, test = digits_data
    torch.manual_seed(0)
    path = export_onnx(Residual(), (1, 8, 8), tmp_path / "r.onnx")
    model = snnc.compile(path, Dataset(train.x[:128]), timesteps=8, quiet=True)
    gen = torch.Generator().manual_seed(0)
    for node in model.graph.find("neuron"):
        sample = tuple(int(d) for d in model.graph.shape(node.outputs[0])[1:])
        node.params["v_init"] = 0.1 * torch.randn(sample, generator=gen)
    eager, graphs = model.runner(cuda_graphs="off"), _graph_runner(model)
    for start in (0, 32, 64):
        x = torch.from_numpy(test.x[start : start + 32])
        assert torch.equal(eager.run_steps(x, 24, chunk=8), graphs.run_steps(x, 24, chunk=8))
    assert graphs.graph_replays == 1 + 3 + 3 and eager.spike_count == graphs.spike_count


def test_observing_or_profiling_runs_eagerly(tmp_path, digits_data):
    model = _compiled(tmp_path, digits_data)
    x = torch.from_numpy(digits_data[1].x[:32])
    runner = _graph_runner(model)
    name = model.graph.find("neuron")[0].outputs[0]
    for _ in range(3):
        runner.rates(x, 32, [name], chunk=8)
        runner.record(x, 16, [name], chunk=8)
    runner.profile = {}
    runner.run(x, 32, chunk=8)
    assert runner.graph_replays == 0 and not runner._captured


def test_a_failed_capture_falls_back_under_auto_and_is_an_error_under_on(tmp_path, digits_data):
    model = _compiled(tmp_path, digits_data)
    x = torch.from_numpy(digits_data[1].x[:32])
    want = model.runner(cuda_graphs="off").run_steps(x, 32, chunk=8)
    runner = _graph_runner(model, FailingCapture)
    with pytest.warns(RuntimeWarning, match="capturing a chunk failed, running eagerly"):
        got = runner.run_steps(x, 32, chunk=8)
    assert torch.equal(want, got) and runner._graph_factory is None and runner.graph_replays == 0
    runner = _graph_runner(model, FailingCapture, mode="on")
    with pytest.raises(SnncError, match=r"--cuda-graphs on: capturing a chunk failed: operation not permitted"):
        runner.run_steps(x, 32, chunk=8)


def test_a_replay_that_differs_from_eager_turns_the_graphs_off(tmp_path, digits_data):
    model = _compiled(tmp_path, digits_data)
    x = torch.from_numpy(digits_data[1].x[:32])
    eager = model.runner(cuda_graphs="off")
    want = eager.run_steps(x, 32, chunk=8)
    runner = _graph_runner(model, WrongReplay)
    with pytest.warns(RuntimeWarning, match=r"a replayed chunk differs from the eager chunk \(output 0 by up to 1"):
        got = runner.run_steps(x, 32, chunk=8)
    assert torch.equal(want, got) and runner._graph_factory is None
    assert runner.spike_count == eager.spike_count and runner.neuron_steps == eager.neuron_steps
    assert torch.equal(runner.run_steps(x, 32, chunk=8), want)  # eager from here on
    runner = _graph_runner(model, WrongReplay, mode="on")
    with pytest.raises(SnncError, match=r"--cuda-graphs on: a replayed chunk differs from the same chunk run eagerly"):
        runner.run_steps(x, 32, chunk=8)


def test_modes_on_the_cpu(tmp_path, digits_data):
    model = _compiled(tmp_path, digits_data)
    assert model.runner()._graph_factory is None  # auto: off the GPU, quietly
    assert model.runner(cuda_graphs="off")._graph_factory is None
    with pytest.raises(SnncError, match=r"--cuda-graphs on: the runner is on cpu, CUDA graphs need a GPU"):
        model.runner(cuda_graphs="on")
    with pytest.raises(SnncError, match=r"^cuda_graphs: expected auto, on, off, got 'yes'"):
        model.runner(cuda_graphs="yes")


def test_blockers_name_what_the_host_decides_per_chunk(tmp_path, digits_data):
    gpu = torch.device("cuda")  # blockers() only reads the device type: no GPU needed
    plain = _compiled(tmp_path, digits_data)
    assert cuda_graphs.blockers(plain.graph, device=gpu, encoding="direct", exec_mode="dense") == []
    reasons = cuda_graphs.blockers(plain.graph, device=gpu, encoding="rate", exec_mode="auto")
    assert reasons == [
        "--encoding rate draws the input spikes on the host at every chunk",
        "--exec auto picks each layer's kernel on the host at every chunk",
    ]
    gated = _compiled(tmp_path, digits_data, maxpool="gated")
    reasons = cuda_graphs.blockers(gated.graph, device=gpu, encoding="direct", exec_mode="dense")
    assert reasons == [
        f"{pool.where}: the gated max pool counts its steps on the host" for pool in gated.graph.find("maxpool")
    ]
    assert len(reasons) == 2


def test_cli_flag(tmp_path, digits_data, capsys):
    from snncompiler.cli.main import main

    model = _compiled(tmp_path, digits_data)
    model.save(tmp_path / "m.snn.onnx")
    _, test = digits_data
    np.savez(tmp_path / "test.npz", x=test.x[:64], y=test.y[:64])
    args = ["eval", str(tmp_path / "m.snn.onnx"), "--data", str(tmp_path / "test.npz"), "--timesteps", "4"]
    assert main(args + ["--cuda-graphs", "off"]) == 0
    capsys.readouterr()
    assert main(args + ["--cuda-graphs", "on"]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs on: the runner is on cpu, CUDA graphs need a GPU" in err and "Traceback" not in err
    assert main(["eval", str(tmp_path / "cnn.onnx"), "--data", str(tmp_path / "test.npz"), "--cuda-graphs", "on"]) == 2
    assert "--cuda-graphs: only for spiking models" in capsys.readouterr().err


# ---- on a GPU -----------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@gpu
@pytest.mark.parametrize(
    "options, run_options",
    [({}, {}), ({"maxpool": "rate"}, {}), ({"population": 2}, {}), ({}, {"presim": 4})],
    ids=["if", "rate-maxpool", "population", "presim"],
)
def test_cuda_graphs_on_a_gpu_equal_eager(tmp_path, digits_data, options, run_options):
    model = _compiled(tmp_path, digits_data, **options)
    _, test = digits_data
    eager = model.runner(device="cuda", cuda_graphs="off", **run_options)
    graphs = model.runner(device="cuda", cuda_graphs="on", **run_options)
    for start in (0, 64, 128):
        x = torch.from_numpy(test.x[start : start + 64]).cuda()
        want, got = eager.run_steps(x, 40, chunk=8), graphs.run_steps(x, 40, chunk=8)
        # the same kernels on the same device; only cuDNN's choice of algorithm could differ
        assert torch.allclose(want, got, atol=1e-5, rtol=0)
        assert (want.mean(0).argmax(1) == got.mean(0).argmax(1)).float().mean() >= 0.98
        assert abs(eager.spike_count - graphs.spike_count) <= 1e-3 * max(eager.spike_count, 1)
    assert graphs.graph_replays == 3 + 5 + 5
