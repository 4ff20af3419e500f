"""Stock movement from real prices and a synthetic stream of social posts: the multi-modality
attention network against price-only and text-only baselines, then ANN vs SNN at every T.

    python -m apps.finance.stock_movement            # full run: 3 seeds; writes results.json and results/*.png
    python -m apps.finance.stock_movement --quick    # 1 seed, fewer epochs (what the test runs)
    python -m apps.finance.stock_movement --json     # stdout: one JSON summary
"""

from __future__ import annotations

import time

import numpy as np
import torch

from apps.common import (
    app_args,
    compare,
    emit_summary,
    human_output,
    print_table,
    save_figure,
    summary,
    synaptic_energy,
    torch_threads,
    write_json,
)
from apps.finance.stock_movement.task import StockMovementNet, StreamSettings, annual_return, generate
from examples.workloads import export_onnx, train_classifier

NAME = "finance.stock_movement"
METRICS = ("accuracy", "mcc", "annual_return_pct")
MODELS = ("price", "text", "multimodal")


def mcc(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of binary predictions (0 when a row or column of the table is empty)."""
    tp = float(np.sum((pred == 1) & (labels == 1)))
    tn = float(np.sum((pred == 0) & (labels == 0)))
    fp = float(np.sum((pred == 1) & (labels == 0)))
    fn = float(np.sum((pred == 0) & (labels == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom > 0 else 0.0


def make_score(labels: np.ndarray, info: dict):
    """``score(logits [N, 2]) -> {accuracy, mcc, annual_return_pct}`` on one split: the
    long/short strategy is long the next day where up is predicted, short elsewhere."""
    labels = np.asarray(labels)

    def score(logits: np.ndarray) -> dict:
        return score_predictions(np.asarray(logits).argmax(1), labels, info)

    return score


def score_predictions(pred: np.ndarray, labels: np.ndarray, info: dict) -> dict:
    """Accuracy, MCC and the long/short strategy's annualised return (% per year, no costs)."""
    return {
        "accuracy": float((pred == labels).mean()),
        "mcc": mcc(pred, labels),
        "annual_return_pct": annual_return(np.where(pred == 1, 1.0, -1.0), info["returns"], info["dates"]),
    }


def _mean_spread(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "runs": [float(v) for v in values],
    }


def main(argv=None) -> dict:
    """Load prices, plant the posts, train the three models per seed, compile the multimodal one."""
    args = app_args(__doc__.splitlines()[0], NAME, argv)
    with human_output(args):
        record = _run(args)
    emit_summary(args, record)
    return record


def _run(args) -> dict:
    settings = StreamSettings(seed=args.seed)
    seeds = [args.seed] if args.quick else [args.seed + i for i in range(3)]
    epochs = 12 if args.quick else 30
    market = generate(settings)
    test_info = market.info["test"]
    score = make_score(market.test.y, test_info)
    print(
        f"{market.stats['samples']} samples (ticker-days) of {', '.join(market.stats['tickers'])}; "
        f"test {market.stats['test_period'][0]} to {market.stats['test_period'][1]}"
    )

    runs = {m: [] for m in MODELS}
    valid_runs = {m: [] for m in MODELS}
    trained, train_s = {}, {}
    with torch_threads(1):  # these layers are tiny: see apps.common.torch_threads
        for seed in seeds:
            for mode in MODELS:
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                net = train_classifier(
                    StockMovementNet(settings.window, settings.posts_max, mode),
                    market.train,
                    epochs=epochs,
                    batch_size=128,
                    seed=seed,
                )
                train_s[f"{mode}/{seed}"] = round(time.perf_counter() - t0, 2)
                with torch.no_grad():
                    runs[mode].append(score(net(torch.from_numpy(market.test.x)).numpy()))
                    valid_runs[mode].append(
                        score_predictions(
                            net(torch.from_numpy(market.valid.x)).numpy().argmax(1),
                            market.valid.y,
                            market.info["valid"],
                        )
                    )
                trained.setdefault(mode, net)  # the first seed's model is the one compiled
                print(
                    f"seed {seed} {mode:>10}: test accuracy {runs[mode][-1]['accuracy']:.4f}, "
                    f"MCC {runs[mode][-1]['mcc']:.4f} ({train_s[f'{mode}/{seed}']:.1f} s)"
                )

    baselines = {
        "bayes_ceiling": score_predictions(test_info["bayes"], market.test.y, test_info),
        "buy_and_hold_annual_return_pct": annual_return(
            np.ones(len(market.test.y)), test_info["returns"], test_info["dates"]
        ),
        "always_up": score_predictions(np.ones(len(market.test.y), np.int64), market.test.y, test_info),
    }
    onnx_path = export_onnx(trained["multimodal"], (market.features,), args.out / "stock_movement.onnx")
    record = compare(
        "stock_movement",
        onnx_path,
        market.train.x[:512],
        market.test.x,
        score,
        timesteps=args.timesteps,
        out_dir=args.out,
    )
    energy_t = min(32, max(args.timesteps))
    sops = synaptic_energy(record, energy_t, market.test.x[:512])
    with torch.no_grad():
        weights, _ = trained["multimodal"].attention(torch.from_numpy(market.test.x))
    cred = _credibility_vs_reputation(trained["multimodal"], market)
    record.update(
        task="next-day up/down of S&P 500, NASDAQ, MSFT (real prices) from returns + synthetic posts",
        seeds=seeds,
        epochs=epochs,
        train_seconds=train_s,
        train_threads=1,
        test_by_model={m: {k: _mean_spread([r[k] for r in runs[m]]) for k in METRICS} for m in MODELS},
        valid_by_model={m: {k: _mean_spread([r[k] for r in valid_runs[m]]) for k in METRICS} for m in MODELS},
        baselines=baselines,
        credibility_reputation_corr=cred,
        attention_entropy=float(-(weights * torch.log(weights + 1e-12)).sum(1).mean()),
        data=dict(settings.as_dict(), **market.stats),
        return_unit="% per year, compound, 252 trading days, tickers equally weighted, no costs",
    )
    record["summary"] = summary(
        "stock_movement",
        "accuracy",
        record["ann"]["accuracy"],
        {t: s["accuracy"] for t, s in record["snn"].items()},
        args.started,
    )

    _print_tables(record, energy_t, sops)
    _figure(record, market, trained["multimodal"], args.figures / "stock_movement.png")
    write_json(record, args.results)
    return record


def _credibility_vs_reputation(net: StockMovementNet, market) -> float:
    """Correlation, over posters, of the learned credibility score with the hidden reputation."""
    with torch.no_grad():
        cred = net.credibility(torch.from_numpy(market.posters[:, 1:].astype(np.float32)))[:, 0].numpy()
    return float(np.corrcoef(cred, market.posters[:, 0])[0, 1])


def _print_tables(record: dict, energy_t: int, sops: dict) -> None:
    print(f"\ntest years, {len(record['seeds'])} seed(s): mean ± std (torch)")
    print(f"{'model':>16}  " + "  ".join(f"{m:>18}" for m in METRICS))
    for model, values in record["test_by_model"].items():
        print(f"{model:>16}  " + "  ".join(f"{values[m]['mean']:>10.4f} ± {values[m]['std']:.4f}" for m in METRICS))
    b = record["baselines"]
    for label, values in (("Bayes ceiling", b["bayes_ceiling"]), ("always up", b["always_up"])):
        print(f"{label:>16}  " + "  ".join(f"{values[m]:>18.4f}" for m in METRICS))
    print(f"buy and hold: {b['buy_and_hold_annual_return_pct']:.2f} {record['return_unit']}")
    print("\nmultimodal model (first seed), ANN vs SNN on the test years:")
    print_table(record, METRICS)
    e = sops["energy_pj"]
    print(
        f"energy per sample at T={energy_t}: ANN {e['ann'] / 1e3:.1f} nJ, SNN {e['snn'] / 1e3:.1f} nJ "
        f"(SNN/ANN {e['snn_over_ann']:.3f}; {sops['energy_model']})"
    )
    print(f"credibility score vs hidden reputation (over posters): r = {record['credibility_reputation_corr']:.3f}")


def _figure(record: dict, market, net, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    models = list(record["test_by_model"])
    means = [100 * record["test_by_model"][m]["accuracy"]["mean"] for m in models]
    stds = [100 * record["test_by_model"][m]["accuracy"]["std"] for m in models]
    ax.bar(models, means, yerr=stds, color=["#999", "#69c", "#c63"], capsize=4)
    ax.axhline(100 * record["baselines"]["bayes_ceiling"]["accuracy"], ls="--", c="k", label="Bayes ceiling")
    ax.axhline(100 * record["baselines"]["always_up"]["accuracy"], ls=":", c="k", label="always up")
    ax.set_ylim(45, 80)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"test years, mean ± std over {len(record['seeds'])} seed(s)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ts = [int(t) for t in record["snn"]]
    ax.semilogx(ts, [100 * record["snn"][str(t)]["accuracy"] for t in ts], "o-", base=2, label="SNN")
    ax.axhline(100 * record["ann"]["accuracy"], c="C1", label="ANN (onnxruntime)")
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("multimodal model: ANN vs SNN")
    ax.legend(fontsize=8)
    ax = axes[2]
    info = market.info["test"]
    with torch.no_grad():
        pred = net(torch.from_numpy(market.test.x)).numpy().argmax(1)
    for label, pos in (
        ("long/short (multimodal ANN)", np.where(pred == 1, 1.0, -1.0)),
        ("buy and hold", np.ones(len(pred))),
    ):
        days, inverse = np.unique(info["dates"], return_inverse=True)
        daily = np.bincount(inverse, pos * info["returns"]) / np.bincount(inverse)
        ax.plot(days, 100 * (np.cumprod(1 + daily) - 1), label=label)
    ax.set_ylabel("cumulative return (%), no costs")
    ax.set_title("test years, 3 tickers equally weighted")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
