"""Models whose output is not a float: a class index (ArgMax/ArgMin at the end) or a mask.

A spiking run reports a float output as its mean over the steps; an index or a mask is computed
by an analog island from the running means of steps 1..t, so it is reported as its value at
step t, in its own dtype (its mean over the steps would be neither an index nor a mask). The
oracle is the same network without the final op: its running-mean logits at step t, reduced by
numpy, must give exactly the index or mask the spiking model reports, through every runtime
(the runner, the reloaded artifact, ``to_torch()``, the standard-ONNX export in onnxruntime)
and through ``evaluate`` and the CLI.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import snncompiler as snnc
from snncompiler.analysis.metrics import correct, top1
from snncompiler.cli.main import main as snnc_main
from snncompiler.errors import SnncError
from tests.formats.helpers import build, init, rand, run_ort

M = helper.make_node
CLASSES = 5


def _network(tail: list, *outputs) -> object:
    """x [N, 3, 6, 6] → Conv → Relu → Flatten → Gemm (the logits "l") → ``tail`` → ``output``."""
    nodes = [
        M("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        M("Relu", ["h"], ["r"]),
        M("Flatten", ["r"], ["f"]),
        M("Gemm", ["f", "w2", "b2"], ["l"], transB=1),
    ] + tail
    weights = [
        init("w1", rand([6, 3, 3, 3], 1) * 0.5),
        init("w2", rand([CLASSES, 216], 2) * 0.2),
        init("b2", rand([CLASSES], 3) * 0.1),
    ]
    extra = [init("c", np.float32(0.2))] if any(n.input[-1] == "c" for n in tail) else []
    if any(n.op_type == "TopK" for n in tail):
        extra.append(init("k", np.array([2], np.int64)))
    return build(nodes, [("x", ["N", 3, 6, 6])], list(outputs), weights + extra, 17)


LOGITS = _network([M("Identity", ["l"], ["y"])], "y")
ARGMAX = _network([M("ArgMax", ["l"], ["y"], axis=1, keepdims=1)], ("y", None, TensorProto.INT64))
ARGMIN = _network([M("ArgMin", ["l"], ["y"], axis=1, keepdims=0)], ("y", None, TensorProto.INT64))
MASK = _network([M("Greater", ["l", "c"], ["y"])], ("y", None, TensorProto.BOOL))
INDEX_AS_FLOAT = _network(
    [M("ArgMax", ["l"], ["i"], axis=1, keepdims=0), M("Cast", ["i"], ["y"], to=TensorProto.FLOAT)], "y"
)
TOPK = _network([M("TopK", ["l", "k"], ["v", "i"], axis=1)], "v", ("i", None, TensorProto.INT64))
STEPS = [1, 2, 3, 5, 8, 16, 40]


def _compile(model):
    x = rand([40, 3, 6, 6], 4, 0, 1)
    return snnc.compile(model, x, timesteps=8, calibration="none", threshold="max", quiet=True), x


@pytest.fixture(scope="module")
def logits_at():
    """The running-mean logits of the network without a tail, at every T in STEPS."""
    compiled, x = _compile(LOGITS)
    return compiled.run(x, max(STEPS), checkpoints=STEPS)


@pytest.mark.parametrize(
    "model,reduce",
    [
        (ARGMAX, lambda logits: logits.argmax(1)[:, None]),
        (ARGMIN, lambda logits: logits.argmin(1)),
        (MASK, lambda logits: logits > np.float32(0.2)),
    ],
    ids=["ArgMax", "ArgMin", "Greater"],
)
def test_an_index_or_a_mask_is_its_value_at_each_step(model, reduce, logits_at):
    compiled, x = _compile(model)
    assert np.array_equal(compiled.ann(x), run_ort(model, x)[0])  # ANN mode: onnxruntime's answer
    outs = compiled.run(x, max(STEPS), checkpoints=STEPS)
    for t in STEPS:
        want = reduce(logits_at[t])
        assert outs[t].dtype == want.dtype and outs[t].shape == want.shape, (t, outs[t].dtype, outs[t].shape)
        assert np.array_equal(outs[t], want), f"T={t}: {np.mean(outs[t] != want):.3f} of the outputs differ"


def test_topk_values_are_means_and_indices_the_last_step(logits_at):
    """TopK at the end: its values (float) are the running means of the sorted logits, its
    indices (int64) the order of the logits' running means at step t, ties in index order."""
    compiled, x = _compile(TOPK)
    outs = compiled.run(x, max(STEPS), checkpoints=STEPS)
    for t in STEPS:
        values, indices = outs[t]
        order = np.argsort(-logits_at[t], axis=1, kind="stable")[:, :2]
        assert indices.dtype == np.int64 and np.array_equal(indices, order), f"T={t}"
        want = np.take_along_axis(logits_at[t], order, 1)
        np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-6, err_msg=f"T={t}")


@pytest.mark.parametrize("model", [ARGMAX, MASK, TOPK], ids=["ArgMax", "Greater", "TopK"])
def test_every_runtime_reports_the_last_step(model, tmp_path):
    compiled, x = _compile(model)
    want = compiled.run(x, 8)
    want = want if isinstance(want, tuple) else (want,)
    compiled.save(tmp_path / "m.snn.onnx")
    forms = {"reloaded artifact": snnc.load(tmp_path / "m.snn.onnx").run(x, 8)}
    with torch.no_grad():
        out = compiled.to_torch()(torch.from_numpy(x), 8)
        forms["to_torch()"] = tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()
    compiled.save_onnx(tmp_path / "m.onnx", 8)
    forms["standard-ONNX export"] = tuple(ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x}))
    for form, outs in forms.items():
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert len(outs) == len(want), form
        for out, expected in zip(outs, want):
            assert out.dtype == expected.dtype, f"{form}: {out.dtype}, the runtime gives {expected.dtype}"
            if expected.dtype.kind == "f":  # the runtimes sum the steps in different orders
                gap = float(np.abs(out - expected).max()) / float(np.abs(expected).max())
                assert gap < 1e-5, f"{form} differs from the runtime by {gap:.2e} (relative)"
            else:
                assert np.array_equal(out, expected), f"{form} differs from the runtime"


def test_an_index_cast_to_float_is_its_latest_value_not_its_mean():
    """Cast of an index to float runs as an island: its running mean at t is the index at t (the
    mean of the per-step indices would keep every early, unsettled pick)."""
    as_float, x = _compile(INDEX_AS_FLOAT)
    as_index, _ = _compile(ARGMAX)
    got, want = as_float.run(x, 40, checkpoints=STEPS), as_index.run(x, 40, checkpoints=STEPS)
    for t in STEPS:
        assert got[t].dtype == np.float32
        assert np.array_equal(got[t], want[t][:, 0].astype(np.float32)), f"T={t}"


def test_evaluate_scores_a_class_index_output(logits_at):
    compiled, x = _compile(ARGMAX)
    labels = logits_at[40].argmax(1)  # the SNN's own answer at T=40: accuracy 1 there, not at T=1
    result = compiled.evaluate(x, labels, STEPS)
    for t in STEPS:
        assert result["snn_accuracy"][str(t)] == pytest.approx(np.mean(logits_at[t].argmax(1) == labels))
    assert result["snn_accuracy"]["40"] == 1.0
    assert result["ann_accuracy"] == pytest.approx(np.mean(run_ort(ARGMAX, x)[0][:, 0] == labels))


def test_metrics_of_class_outputs():
    assert np.array_equal(top1(np.array([[2], [0], [1]], np.int64)), [2, 0, 1])
    assert np.array_equal(top1(np.array([True, False])), [1, 0])  # a thresholded binary decision
    assert correct(np.array([[2], [0], [4]]), np.array([2, 1, 4])) == 2  # no upper bound: classes unknown
    with pytest.raises(SnncError, match="class indices ≥ 0"):
        correct(np.array([[2], [0]]), np.array([2, -1]))
    with pytest.raises(SnncError, match="int64 output with 6 values per sample"):
        top1(np.zeros((2, 1, 2, 3), np.int64))


def test_cli_run_and_eval_of_an_argmax_model(tmp_path, capsys):
    path = tmp_path / "argmax.onnx"
    path.write_bytes(ARGMAX.SerializeToString())
    x = rand([40, 3, 6, 6], 4, 0, 1)
    y = run_ort(ARGMAX, x)[0][:, 0]
    np.savez(tmp_path / "data.npz", x=x, y=y)
    art = tmp_path / "argmax.snn.onnx"
    assert snnc_main(["compile", str(path), "--calib", str(tmp_path / "data.npz"), "-o", str(art)]) == 0
    assert snnc_main(["run", str(art), "--input", str(tmp_path / "data.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")["y"]
    assert out.dtype == np.int64 and out.shape == (40, 1) and out.min() >= 0 and out.max() < CLASSES
    capsys.readouterr()
    assert snnc_main(["eval", str(art), "--data", str(tmp_path / "data.npz"), "--timesteps", "64"]) == 0
    printed = capsys.readouterr().out
    assert "ANN mode 100.00%" in printed
    accuracy = float(printed.strip().splitlines()[-1].split()[-1].rstrip("%"))
    assert accuracy > 80, printed  # a class index scored as one, not argmaxed over a size-1 axis (always 0)


def test_ties_between_equal_spike_counts_do_not_depend_on_the_chunking(tmp_path):
    """Two population units with the same spike count at step t tie (ArgMax takes the first);
    summed in float32 across chunk boundaries, their running means differed in the last bit by
    the spikes' timing, and the pick flipped with ``chunk`` and in the standard-ONNX export (by
    0.18 of the output's scale on this block at T=8)."""
    from tests.test_spiking_blocks import _model

    model, x = _model("ArgMax, Equal and Where"), rand([12, 3, 4, 4], 3)
    compiled = snnc.compile(model, x, timesteps=8, calibration="none", threshold="max", population=2, quiet=True)
    want = compiled.run(x, 8)
    compiled.save_onnx(tmp_path / "m.onnx", 8)
    forms = {f"chunk={k}": compiled.run(x, 8, chunk=k) for k in (1, 2, 3, 5)}
    forms["standard-ONNX export"] = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    for form, out in forms.items():
        gap = float(np.abs(out - want).max()) / float(np.abs(want).max())
        assert gap < 1e-5, f"{form}: differs from one chunk by {gap:.2e} (relative)"
