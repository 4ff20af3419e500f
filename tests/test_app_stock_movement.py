"""The stock-movement app (apps/finance/stock_movement) in its quick configuration: real prices,
planted posts, the multimodal attention network against its single-modality baselines, ANN vs SNN.
Floors are set below what --quick measured (seed 0: multimodal 66.2 %, text 62.4 %, price 52.5 %;
SNN at T=32 within 0.1 points of the ANN), leaving room for other CPUs' float sums."""

from __future__ import annotations

import json

import numpy as np

from apps.finance.stock_movement.__main__ import main
from apps.finance.stock_movement.task import StreamSettings, annual_return, generate


def test_stock_movement_quick(tmp_path, capsys):
    record = main(["--quick", "--json", "--out", str(tmp_path), "--timesteps", "1,8,32"])
    printed = json.loads(capsys.readouterr().out)  # --json: stdout is the summary alone
    assert set(printed) == {"task", "metric", "ann", "snn", "seconds"}
    assert set(printed["snn"]) == {"1", "8", "32"} and printed["metric"] == "accuracy"
    assert printed["ann"] == round(record["ann"]["accuracy"], 6)
    assert (tmp_path / "stock_movement.snn.onnx").exists() and (tmp_path / "stock_movement.png").exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"test_by_model", "baselines", "energy", "summary"} <= set(saved)

    by_model = {m: {k: v["mean"] for k, v in s.items()} for m, s in record["test_by_model"].items()}
    # the exported ONNX is the trained torch model (a near-tie sample may flip)
    assert abs(record["ann"]["accuracy"] - by_model["multimodal"]["accuracy"]) <= 2 / record["samples"]
    # multimodal beats both single-modality baselines, in accuracy and in MCC
    assert by_model["multimodal"]["accuracy"] >= by_model["text"]["accuracy"] + 0.015
    assert by_model["text"]["accuracy"] >= by_model["price"]["accuracy"] + 0.04
    assert by_model["multimodal"]["mcc"] >= by_model["text"]["mcc"] + 0.03
    assert by_model["multimodal"]["accuracy"] <= record["baselines"]["bayes_ceiling"]["accuracy"] + 0.01
    # the credibility score learned the hidden reputation from the identity features alone
    assert record["credibility_reputation_corr"] > 0.7

    # softmax attention and its weighting of the post vectors stay analog; the rest spikes
    assert record["analog_islands"] == ["/Softmax", "/Mul_1"]
    assert abs(record["snn"]["32"]["accuracy"] - record["ann"]["accuracy"]) <= 0.015
    assert record["snn"]["32"]["accuracy"] > record["snn"]["1"]["accuracy"]
    assert record["energy"]["energy_pj"]["snn"] > 0


def test_split_is_chronological_and_prices_are_real():
    market = generate(StreamSettings())
    train_end = market.info["train"]["dates"].max()
    assert (
        train_end
        < market.info["valid"]["dates"].min()
        <= market.info["valid"]["dates"].max()
        < market.info["test"]["dates"].min()
    )
    assert market.stats["tickers"] == ["MSFT", "NASDAQ", "S&P 500"]
    # the labels are the real next-day moves: up exactly where the realised return is positive
    assert np.array_equal(market.test.y, (market.info["test"]["returns"] > 0).astype(np.int64))


def test_annual_return_units():
    dates = np.repeat(np.arange(252), 2).astype("datetime64[D]")
    # +0.1 % every day on both tickers for one year of trading days: (1.001^252 − 1) in %
    assert np.isclose(annual_return(np.ones(504), np.full(504, 0.001), dates), 100 * (1.001**252 - 1))
    # long one, short the other: nothing
    assert np.isclose(annual_return(np.tile([1.0, -1.0], 252), np.full(504, 0.001), dates), 0.0)
