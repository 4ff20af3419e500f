"""The command line as a user meets it: --version, a parser that loads without torch, help text and
defaults on every flag, one `eval --json` schema for ANNs and SNNs, progress bars that stay off
pipes, export warnings printed once, and `snnc report`'s self-contained page."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import snncompiler as snnc
from snncompiler.data import save_npz

cli = importlib.import_module("snncompiler.cli.main")


def snnc_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_version():
    r = snnc_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"snnc {snnc.__version__}", r


def test_help_and_version_do_not_import_torch():
    """The parser module, `--help` and `--version` leave torch (and onnx) unimported."""
    code = (
        "import importlib, sys\n"
        "main = importlib.import_module('snncompiler.cli.main')\n"
        "parser = main.build_parser()\n"
        "for argv in (['--help'], ['--version'], ['compile', '--help'], ['eval', '--help'], ['report', '--help']):\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "sys.stdout = sys.__stdout__\n"
        "print(sorted(m for m in ('torch', 'onnx') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-300:]
    # the check can fail: the same probe sees torch once something imports it
    r = subprocess.run(
        [sys.executable, "-c", "import sys, snncompiler.model; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert r.stdout.strip() == "True", r.stderr


def _actions():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in [("snnc", parser)] + sorted(sub.choices.items()):
        for action in p._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield name, action


def test_every_flag_has_help_and_shows_its_default():
    seen, missing, no_default = 0, [], []
    for command, action in _actions():
        seen += 1
        where = f"{command} {'/'.join(action.option_strings) or action.dest}"
        if not (action.help or "").strip():
            missing.append(where)
        takes_value = action.nargs != 0 and not isinstance(action, argparse._VersionAction)
        if takes_value and action.default not in (None, argparse.SUPPRESS) and "default" not in action.help:
            no_default.append(where)
    assert seen > 80  # every command's flags were walked
    assert not missing, f"flags without help: {missing}"
    assert not no_default, f"flags whose help does not show their default: {no_default}"
    commands = {c for c, _ in _actions()}
    assert {"compile", "eval", "run", "report", "export", "env"} <= commands


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from snncompiler import progress

    class Tty:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress.progress_enabled()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress.progress_enabled()
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress.progress_enabled()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or file, not a terminal
    assert not progress.progress_enabled()


@pytest.fixture(scope="module")
def compiled(small_digits_cnn, tmp_path_factory):
    """(ANN path, artifact path, labelled test npz) of the small digits CNN."""
    path, train, test = small_digits_cnn
    folder = tmp_path_factory.mktemp("ux")
    model = snnc.compile(str(path), train.x[:256], timesteps=8)
    artifact = folder / "cnn.snn.onnx"
    model.save(str(artifact))
    data = save_npz(folder / "test.npz", test.x[:96], test.y[:96])
    return path, artifact, data


def test_eval_json_has_one_schema(compiled, tmp_path, capsys):
    ann, artifact, data = compiled
    plot = tmp_path / "acc.png"
    assert cli.main(["eval", str(ann), "--data", str(data), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert (
        cli.main(["eval", str(artifact), "--data", str(data), "--timesteps", "1,4", "--json", "--plot", str(plot)]) == 0
    )
    out = capsys.readouterr()
    s = json.loads(out.out)
    assert list(a)[: len(cli.EVAL_JSON_KEYS)] == list(s)[: len(cli.EVAL_JSON_KEYS)] == list(cli.EVAL_JSON_KEYS)
    assert set(a) == set(s)
    assert a["kind"] == "ann" and a["snn_accuracy"] is None and a["firing_rate"] is None and a["layers"] is None
    assert a["engine"] == "onnxruntime" and a["samples"] == s["samples"] == 96 and a["model"] == str(ann)
    assert s["kind"] == "snn" and set(s["snn_accuracy"]) == {"1", "4"} and s["firing_rate"] > 0
    assert 0.5 < s["ann_accuracy"] <= 1 and 0.5 < a["ann_accuracy"] <= 1 and s["seconds"] >= 0
    assert s["synaptic_ops"] is None and s["layers"] is None
    assert plot.stat().st_size > 0 and f"wrote {plot}" in out.err  # stdout stays one JSON object
    assert "\r" not in out.err  # no progress bar when stderr is not a terminal
    plot.unlink()
    assert cli.main(["eval", str(artifact), "--data", str(data), "--timesteps", "2", "--plot", str(plot)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {plot}: accuracy against T" and plot.exists()


def test_export_prints_each_warning_once(tmp_path, capsys):
    from examples.workloads import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    onnx_path = export_onnx(net.eval(), (1, 4, 4), tmp_path / "mlp.onnx")
    snnc.compile(str(onnx_path), np.random.default_rng(0).random((32, 1, 4, 4), np.float32)).save(
        str(tmp_path / "m.snn.onnx")
    )
    assert cli.main(["export", str(tmp_path / "m.snn.onnx"), "-o", str(tmp_path / "m.nir")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert any("soft reset" in ln for ln in lines)  # the default soft reset is lossy in NIR
    topics = [re.sub(r"^(snnc: WARNING: NIR export: |warning: )", "", ln) for ln in lines]
    assert len(topics) == len(set(topics)), lines


def test_report_page_is_self_contained_with_every_section(compiled, tmp_path, capsys):
    from snncompiler.analysis.report import SECTIONS

    _, artifact, data = compiled
    out = tmp_path / "report.html"
    assert (
        cli.main(
            ["report", str(artifact), "--data", str(data), "-o", str(out), "--timesteps", "1,2,8", "--samples", "48"]
        )
        == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page, heading
    sources = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(sources) >= len(SECTIONS)  # a figure per section
    assert all(s.startswith("data:image/png;base64,") for s in sources), [s[:40] for s in sources]
    assert "url(" not in page and "<script" not in page and "<link" not in page
    assert "48 samples" in page and "T=8" in page
    assert not [p for p in tmp_path.iterdir() if p.name != "report.html"]  # nothing else written


def test_report_bad_input_is_one_line(compiled, tmp_path):
    ann, artifact, data = compiled
    out = tmp_path / "r.html"
    for args, needle in [
        (["--data", tmp_path / "missing.npz"], "missing.npz"),
        (["--data", data, "--timesteps", "0"], "--timesteps"),
        ([], "--data"),
    ]:
        r = snnc_cli("report", artifact, *args, "-o", out)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    r = snnc_cli("report", ann, "--data", data, "-o", out)
    assert r.returncode == 2 and "plain ONNX ANN" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = snnc_cli("report", artifact, "--data", data, "-o", tmp_path / "no" / "r.html")
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    assert not out.exists()


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that progress bars are drawn into it."""

    def isatty(self):
        return True


@pytest.fixture
def labelled(compiled, small_digits_cnn, tmp_path):
    """A small labelled training .npz for finetune and compile --finetune."""
    _, train, _ = small_digits_cnn
    return save_npz(tmp_path / "train.npz", train.x[:120], train.y[:120])


def _run_on(stderr, monkeypatch, argv) -> str:
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert cli.main(argv) == 0, stderr.getvalue()
    return stderr.getvalue()


@pytest.mark.parametrize("command", ["finetune", "compile --finetune", "train"])
def test_training_shows_an_epoch_bar_on_a_terminal_only(command, compiled, labelled, tmp_path, monkeypatch, capsys):
    ann, artifact, _ = compiled
    out = tmp_path / "m.snn.onnx"
    argv, desc = {
        "finetune": (
            ["finetune", str(artifact), "--data", str(labelled), "--timesteps", "2", "--epochs", "2"],
            "finetune",
        ),
        "compile --finetune": (
            ["compile", str(ann), "--calib", str(labelled), "--timesteps", "2", "--finetune", "2"],
            "finetune",
        ),
        "train": (["train", str(ann), "--data", str(labelled), "--timesteps", "2", "--epochs", "2"], "snnc train"),
    }[command]
    argv += ["-o", str(out)]
    shown = _run_on(_Terminal(), monkeypatch, argv)
    assert desc in shown and "2/2" in shown and "epoch" in shown and "loss=" in shown, shown
    assert "[snnc train]" not in shown  # the bar replaces fit's per-epoch lines
    if command != "train":  # train has no --quiet; TQDM_DISABLE and pipes silence it
        assert _run_on(_Terminal(), monkeypatch, [*argv, "--quiet"]) == ""
    assert _run_on(io.StringIO(), monkeypatch, argv) == ""  # piped: nothing either
    capsys.readouterr()


def test_report_shows_its_stages_on_a_terminal_only(compiled, tmp_path, monkeypatch, capsys):
    from snncompiler.analysis.report import STAGES

    _, artifact, data = compiled
    argv = ["report", str(artifact), "--data", str(data), "-o", str(tmp_path / "r.html"), "--timesteps", "1,2"]
    argv += ["--samples", "16"]
    shown = _run_on(_Terminal(), monkeypatch, argv)
    assert "report" in shown and f"{len(STAGES)}/{len(STAGES)}" in shown, shown
    assert _run_on(_Terminal(), monkeypatch, [*argv, "--quiet"]) == ""
    assert _run_on(io.StringIO(), monkeypatch, argv) == ""
    capsys.readouterr()
