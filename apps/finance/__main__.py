"""Stock movement prediction from prices and credibility-weighted posts: ANN vs SNN at every T.

    python -m apps.finance            # full run (writes apps/finance/results.json)
    python -m apps.finance --quick    # the small configuration the tests run
"""
from __future__ import annotations

import time

import numpy as np
import torch

from apps.common import app_args, compare, print_table, torch_threads, write_json
from apps.finance.task import MarketSettings, PostNet, generate
from snncompiler.workloads import evaluate, export_onnx, train_classifier

METRICS = ("accuracy", "mcc", "long_short_return")


def make_score(labels: np.ndarray, returns: np.ndarray):
    """``score(logits [N, 2]) -> {accuracy, mcc, long_short_return}`` for the test days.

    long_short_return: the sum of the daily returns of a strategy that is long the next day when
    class 1 (up) is predicted and short otherwise (no compounding, no costs; daily volatility 1%).
    """
    labels = np.asarray(labels)

    def score(logits: np.ndarray) -> dict:
        pred = np.asarray(logits).argmax(1)
        return {"accuracy": float((pred == labels).mean()), "mcc": mcc(pred, labels),
                "long_short_return": float((np.where(pred == 1, 1.0, -1.0) * returns).sum())}

    return score


def mcc(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of binary predictions (0 when a row or column of the table is empty)."""
    tp = float(np.sum((pred == 1) & (labels == 1)))
    tn = float(np.sum((pred == 0) & (labels == 0)))
    fp = float(np.sum((pred == 1) & (labels == 0)))
    fn = float(np.sum((pred == 0) & (labels == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0


def main(argv=None) -> dict:
    """Generate the market, train the three models, compile the credibility model, compare ANN and SNN."""
    args = app_args(__doc__.splitlines()[0], "finance", argv)
    settings = MarketSettings(days=6000 if args.quick else 20000, seed=args.seed)
    epochs = 20 if args.quick else 40
    market = generate(settings)
    score = make_score(market.test.y, market.test_returns)

    with torch_threads(1):  # these layers are tiny: see apps.common.torch_threads
        models, train_s = {}, {}
        for gate in ("none", "uniform", "credibility"):
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            models[gate] = train_classifier(PostNet(settings.window, settings.posts_max, gate), market.train,
                                            epochs=epochs, batch_size=256, seed=args.seed)
            train_s[gate] = round(time.perf_counter() - t0, 2)
            print(f"trained {gate:>11} model in {train_s[gate]:5.1f} s: "
                  f"test accuracy {100 * evaluate(models[gate], market.test):.2f}% (torch)")

    onnx_path = export_onnx(models["credibility"], market.train.x.shape[1:], args.out / "finance.onnx")
    record = compare("finance", onnx_path, market.train.x[:512], market.test.x, score,
                     timesteps=args.timesteps, out_dir=args.out)
    with torch.no_grad():
        torch_scores = {name: score(models[gate](torch.from_numpy(market.test.x)).numpy())
                        for name, gate in (("price_only", "none"), ("uniform_posts", "uniform"),
                                           ("credibility", "credibility"))}
        # does the gate measure credibility? each poster's gate against their hidden reputation
        gates = models["credibility"].cred(torch.from_numpy(market.posters[None, :, 1:].astype(np.float32)))[0]
    record.update(torch=torch_scores,
                  gate_reputation_corr=float(np.corrcoef(gates.numpy(), market.posters[:, 0])[0, 1]),
                  train_seconds=train_s, train_threads=1, epochs=epochs,
                  data=dict(settings.as_dict(), train_days=len(market.train), test_days=len(market.test),
                            **market.stats))
    print_table(record, METRICS)
    for name, values in torch_scores.items():  # aligned with print_table's rows
        print(f"{'torch: ' + name.replace('_', ' '):20}  " + "  ".join(f"{values[m]:>10.4f}" for m in METRICS))
    print(f"correlation of the learned gate with the posters' hidden reputation: {record['gate_reputation_corr']:.3f}")
    write_json(record, args.results)
    return record


if __name__ == "__main__":
    main()
