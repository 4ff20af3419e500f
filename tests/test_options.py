"""Compile options have one home (snncompiler/options.py, the neuron model in snncompiler/ir/neuron.py):
the API and the CLI compile the same model from the same options, a bad option is refused before any
work, and running a model on another device leaves its graph where it was."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import snncompiler as snnc
from examples.workloads import DigitsCNN, export_onnx
from snncompiler import options
from snncompiler.data import Dataset
from snncompiler.errors import OptionError
from snncompiler.ir.neuron import DEFAULT_LIF_TAU, NeuronSpec


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(DigitsCNN(width=4), (1, 8, 8), tmp_path_factory.mktemp("m") / "cnn.onnx")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    path = tmp_path_factory.mktemp("d") / "calib.npz"
    np.savez(path, x=x)
    return x, path


def _snnc(*args):
    proc = subprocess.run([sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def _params(model_file):
    m = onnx.load(str(model_file))
    return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}, m


@pytest.mark.parametrize("extra", [[], ["--tau", "3"]])
def test_api_lif_compile_equals_the_cli(model_path, calib, tmp_path, extra):
    """`snnc.compile(..., neuron="lif")` (once refused: tau defaulted to 0 in the library and to 2 only
    in the CLI) writes the very artifact `snnc compile --neuron lif` writes."""
    x, calib_file = calib
    cli_out = tmp_path / "cli.snn.onnx"
    rc, _, err = _snnc("compile", model_path, "--calib", calib_file, "-o", cli_out, "--neuron", "lif", *extra)
    assert rc == 0, err
    kwargs = {"tau": float(extra[1])} if extra else {}
    api = snnc.compile(model_path, Dataset(x), neuron="lif", **kwargs)
    api_out = tmp_path / "api.snn.onnx"
    api.save(api_out)
    assert api_out.read_bytes() == cli_out.read_bytes()
    (cli_params, cli_model), (api_params, _) = _params(cli_out), _params(api_out)
    assert cli_params.keys() == api_params.keys()
    for name, value in cli_params.items():
        np.testing.assert_array_equal(api_params[name], value)
    tau = float(extra[1]) if extra else DEFAULT_LIF_TAU
    neurons = [n for n in cli_model.graph.node if n.op_type == "Neuron"]
    assert neurons and all(
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["tau"] == tau for n in neurons
    )
    assert api.options["tau"] == tau and api.options["neuron"] == "lif"
    loaded = snnc.load(cli_out)
    np.testing.assert_array_equal(loaded.run(x[:16], 8), api.run(x[:16], 8))


BAD = [
    (dict(threshold="p200"), "threshold: expected max, mse or a percentile"),
    (dict(neuron="lif", tau=1.0), "tau: must be > 1 for LIF"),
    (dict(tau=3.0), "tau: only meaningful for LIF neurons"),
    (dict(neuron="alif"), "neuron: expected if or lif"),
    (dict(reset="zero"), "reset: expected soft or hard"),
    (dict(v0="one"), "v0: expected half or zero"),
    (dict(maxpool="median"), "maxpool: expected one of rate, gated, input, output"),
    (dict(encoding="poisson"), "encoding: expected direct or rate"),
    (dict(encoding="sequence"), "encoding: 'sequence': conversion calibrates on static inputs"),
    (dict(calibration="full"), "calibration: expected one of none, light, advanced"),
    (dict(substitute="tanh"), "substitute: expected one of relu"),
    (dict(timesteps=0), "timesteps: must be an integer ≥ 1"),
    (dict(lr=-1.0), "lr: must be a positive number"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[next(iter(b)) + "=" + str(next(iter(b.values()))) for b, _ in BAD])
def test_bad_options_are_refused_before_any_work(model_path, calib, monkeypatch, bad, message):
    """Every option is checked before the model is read and before the statistics pass runs over
    the calibration data (a bad threshold used to be found only after it); the message names the
    argument, as the library's caller knows it."""
    from snncompiler import compiler
    from snncompiler.passes import stats

    def never(*args, **kwargs):
        raise AssertionError("the work started before the options were checked")

    monkeypatch.setattr(stats, "run", never)
    monkeypatch.setattr(stats, "collect", never)
    monkeypatch.setattr(compiler, "load_ann", never)
    with pytest.raises(OptionError) as info:
        snnc.compile(model_path, Dataset(calib[0]), **bad)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.option == message.split(":")[0]


def test_the_cli_names_the_flag(model_path, calib, tmp_path):
    """The same check, reported under the command line's flag; nothing is written."""
    out = tmp_path / "m.snn.onnx"
    for flags, needle in [
        (["--threshold", "p200"], "--threshold: expected max, mse or a percentile like p99.9"),
        (["--tau", "3"], "--tau: only meaningful for LIF neurons"),
        (["--neuron", "lif", "--tau", "0.5"], "--tau: must be > 1 for LIF"),
    ]:
        rc, _, err = _snnc("compile", model_path, "--calib", calib[1], "-o", out, *flags)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], err
        assert not out.exists()


def test_the_cli_restates_no_default():
    """Every compile flag that is a library option defaults to None, so the library's default applies."""
    from snncompiler.cli.main import build_parser

    args = build_parser().parse_args(["compile", "m.onnx", "--calib", "c.npz", "-o", "o.snn.onnx"])
    names = set(options.CompileOptions().as_dict())
    flags = {k: v for k, v in vars(args).items() if k in names}
    assert set(flags) >= {
        "timesteps",
        "threshold",
        "neuron",
        "tau",
        "reset",
        "v0",
        "maxpool",
        "encoding",
        "calib_samples",
        "calibration",
        "iterations",
        "seed",
        "channelwise",
        "strict",
        "substitute",
    }
    assert all(v is None for v in flags.values()), flags
    for flag, value in (("--channelwise", True), ("--no-channelwise", False)):  # the pipeline's two fixed choices
        args = build_parser().parse_args(["compile", "m.onnx", "--calib", "c.npz", "-o", "o.snn.onnx", flag])
        assert args.channelwise is value
    args = build_parser().parse_args(["finetune", "m.snn.onnx", "--data", "d.npz", "-o", "o.snn.onnx"])
    assert all(getattr(args, k) is None for k in ("timesteps", "epochs", "lr", "batch_size", "seed"))


def test_each_default_comes_from_one_place():
    """The defaults that used to disagree (tau 0 vs 2, p99.99 vs p99.9 in the thresholds pass, T=32
    in seven files) are read from options.py / ir/neuron.py by every stage."""
    from snncompiler.train import LIF

    resolved = options.CompileOptions()
    assert resolved.timesteps == options.DEFAULT_TIMESTEPS and resolved.threshold == options.DEFAULT_THRESHOLD
    assert options.CompileOptions(neuron="lif").tau == DEFAULT_LIF_TAU
    assert options.CompileOptions(reset="hard").threshold == options.HARD_RESET_THRESHOLD
    assert options.CompileOptions(calibration="advanced").threshold == options.ADVANCED_THRESHOLD
    # LIF networks are bias-calibrated unless told otherwise; IF networks and unrecorded settings are not
    assert resolved.calibration == "none" and options.CompileOptions(neuron="lif").calibration == "light"
    assert options.CompileOptions(neuron="lif", calibration="none").calibration == "none"
    assert options.setting({"neuron": "lif"}, "calibration") == "none" == options.DEFAULTS["calibration"]
    # what a pass run on a partial options dict reads
    assert options.setting({}, "threshold") == options.DEFAULT_THRESHOLD
    assert options.setting({"reset": "hard"}, "threshold") == options.HARD_RESET_THRESHOLD
    assert options.setting({"neuron": "lif"}, "tau") == DEFAULT_LIF_TAU
    assert options.setting({}, "timesteps") == options.DEFAULT_TIMESTEPS
    from snncompiler import model

    assert model.DEFAULTS is options.DEFAULTS
    assert model.CompiledModel(snnc.Graph([], [], []), {}).options == options.DEFAULTS
    # the neuron model: the same decay and v0 in conversion, the runtime and training
    spec = NeuronSpec.from_attrs({"neuron": "lif"})
    assert spec.tau == DEFAULT_LIF_TAU and spec.decay == 0.5 and spec.tau_of_decay(spec.decay) == DEFAULT_LIF_TAU
    assert LIF(neuron="lif").spec == NeuronSpec("lif", DEFAULT_LIF_TAU, "hard", "zero")
    assert NeuronSpec.from_attrs({}).attrs() == {"neuron": "if", "tau": 0.0, "reset": "soft", "v0": "half"}
    assert float(NeuronSpec().initial_potential(torch.tensor(2.0))) == 1.0
    assert NeuronSpec(v0="zero").initial_potential(2.0) == 0.0
    with pytest.raises(snnc.SnncError, match="^file: node 'n': attribute 'tau': must be > 1"):
        NeuronSpec.from_attrs({"neuron": "lif", "tau": 0.5}, where="file: node 'n'")


def test_finetune_keeps_the_artifacts_neuron_model(model_path, calib):
    """GraphNet builds each LIF from the node's NeuronSpec (it used to read tau as `tau or 2.0`)."""
    from snncompiler.train.finetune import GraphNet, _key

    x = calib[0]
    for kwargs in (dict(neuron="lif", tau=3.0), dict(neuron="if"), dict(neuron="lif", reset="hard", v0="zero")):
        model = snnc.compile(model_path, Dataset(x), **kwargs)
        net = GraphNet(model.graph)
        for node in model.graph.find("neuron"):
            assert net.lifs[_key(node.name)].spec == NeuronSpec.from_attrs(node.attrs)


def _tensors(graph):
    return {(n.name, k): (p, p.data_ptr(), p.device) for n in graph.nodes for k, p in n.params.items()}


def _assert_untouched(graph, before):
    after = _tensors(graph)
    assert after.keys() == before.keys()
    for key, (tensor, ptr, device) in before.items():
        now = after[key]
        assert now[0] is tensor and now[1] == ptr and now[2] == device, key


def test_running_on_another_device_leaves_the_graph_where_it_was(model_path, calib, monkeypatch):
    """The runners copy parameters to their device; the CompiledModel's graph keeps its tensors.

    No GPU is needed: "cuda" is mapped to the meta device, onto which moving a tensor makes a new
    one (as it does onto a GPU), and constructing a runner is where the parameters used to be
    moved in place."""
    from snncompiler.runtime import executor, snn
    from snncompiler.train.finetune import GraphNet

    x = calib[0][:8]
    # output max pooling: a rate max pool's runner reads its θ values, which meta tensors do not have
    model = snnc.compile(model_path, Dataset(calib[0]), maxpool="output")
    expected = model.run(x, 4)
    before = _tensors(model.graph)
    assert all(device.type == "cpu" for _, _, device in before.values())
    meta = torch.device("meta")
    monkeypatch.setattr(snn, "checked_device", lambda device: meta)
    monkeypatch.setattr(executor, "checked_device", lambda device: meta)
    runner = model.runner(device="cuda")
    assert runner.graph is not model.graph
    assert all(p.device == meta for n in runner.graph.nodes for p in n.params.values())
    _assert_untouched(model.graph, before)
    ex = executor.Executor(model.graph, "cuda")
    assert all(p.device == meta for n in ex.graph.nodes for p in n.params.values())
    _assert_untouched(model.graph, before)
    GraphNet(model.graph).to(meta)  # fine-tuning on a device: its own copies move, the graph's do not
    _assert_untouched(model.graph, before)
    monkeypatch.undo()
    # on the device it already is on, nothing is copied
    assert model.runner().graph is model.graph and executor.Executor(model.graph).graph is model.graph
    np.testing.assert_array_equal(model.run(x, 4), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_running_on_a_gpu_leaves_the_graph_on_the_cpu(model_path, calib):
    x = calib[0][:8]
    model = snnc.compile(model_path, Dataset(calib[0]))
    before = _tensors(model.graph)
    model.run(x, 4, device="cuda")
    model.evaluate(x, np.zeros(len(x), np.int64), [4], device="cuda")
    _assert_untouched(model.graph, before)
    assert model.last_runner.device.type == "cuda"
