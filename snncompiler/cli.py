"""``snnc``: the command-line entry point.

Every user error is one line on stderr and exit status 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
import warnings

from .errors import SnncError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = _Parser(prog="snnc", description="snncompiler: compile trained ANNs (ONNX) into spiking neural networks.")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("inspect", help="per-node table: shapes, parameters, MACs, how each node converts")
    p.add_argument("model", metavar="FILE", help="an .onnx model or a compiled .snn.onnx artifact")
    p.add_argument("--json", action="store_true", help="print the table and totals as JSON")
    _add_common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run a model on an .npz input and save its output")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", required=True, metavar="X.npz", help="input array under the key 'x'")
    p.add_argument("-o", "--output", required=True, metavar="Y.npz", help="where to write the output (key 'y')")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="top-1 accuracy of a model on labelled .npz data")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data", required=True, metavar="TEST.npz", help="inputs 'x' and int64 labels 'y'")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--engine", choices=["onnxruntime", "torch"], default="onnxruntime",
                   help="for plain ONNX models: onnxruntime (default, the reference) or snnc's torch runtime")
    p.add_argument("--device", default="cpu", help="cpu or cuda (torch engine)")
    _add_common(p)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, map errors to exit codes."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="snnc: %(levelname)s: %(message)s")
    if not debug:
        warnings.filterwarnings("ignore")
    try:
        return int(args.func(args) or 0)
    except SnncError as exc:
        if debug:
            traceback.print_exc()
        print(f"snnc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("snnc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in snnc, not bad input: still one line unless --debug
        if debug:
            raise
        msg = " ".join(str(exc).split())[:300]
        print(f"snnc: internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


# ---- commands -----------------------------------------------------------------------
def cmd_inspect(args) -> int:
    """snnc inspect FILE"""
    from .frontend import load_graph
    from .inspect import format_table, human, node_rows, summary

    graph = load_graph(args.model, lenient=True)
    rows = node_rows(graph)
    totals = summary(graph, rows)
    if args.json:
        print(json.dumps({"model": args.model, "nodes": rows, "totals": totals}, indent=1))
        return 0
    print(format_table(rows, [("name", "name"), ("op", "op"), ("core_op", "core op"), ("output_shape", "output"),
                              ("params", "params"), ("macs", "MACs"), ("conversion", "converts as"),
                              ("detail", "")]))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(totals["conversion_counts"].items()))
    print(f"\n{args.model}: {totals['nodes']} nodes ({counts}); parameters {totals['parameters']:,} "
          f"({human(totals['parameters'])}); MACs per sample {totals['macs_per_sample']:,} "
          f"({human(totals['macs_per_sample'])})")
    if "unsupported" in totals["conversion_counts"]:
        print("unsupported operators: the model cannot be run or compiled until they are replaced", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    """snnc run MODEL --input X.npz -o Y.npz"""
    import numpy as np

    from . import load
    from .data import load_npz

    data = load_npz(args.input, arg="--input")
    model = load(args.model, device=args.device)
    outputs = [model(x) for x, _ in data.batches(args.batch_size)]
    y = np.concatenate(outputs, axis=0)
    np.savez(args.output, y=y)
    print(f"wrote {args.output}: y {list(y.shape)} from {len(data)} samples")
    return 0


def cmd_eval(args) -> int:
    """snnc eval MODEL --data TEST.npz [--json]"""
    from .data import load_npz
    from .metrics import top1

    data = load_npz(args.data, require_labels=True)
    t0 = time.perf_counter()
    if args.engine == "onnxruntime":
        from .ort import OrtModel

        model = OrtModel(args.model)
    else:
        from . import load

        model = load(args.model, device=args.device)
    correct = 0
    for x, y in data.batches(args.batch_size):
        correct += int((top1(model(x)) == y).sum())
    acc = correct / len(data)
    result = {"model": args.model, "samples": len(data), "ann_accuracy": acc, "engine": args.engine,
              "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}: top-1 accuracy {100 * acc:.2f}% on {len(data)} samples "
              f"({args.engine}, {result['seconds']:.2f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
