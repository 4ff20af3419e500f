"""Benchmark workloads: generators are deterministic, models build and export, tiny models learn."""

from __future__ import annotations

import numpy as np
import torch

from examples.workloads import (
    DigitsResNet,
    TabularMLP,
    VGGSmall,
    breast_cancer,
    digits,
    evaluate,
    textured_shapes,
    train_classifier,
)


def test_textured_shapes_deterministic_and_balanced():
    a, b, c = textured_shapes(64, seed=3), textured_shapes(64, seed=3), textured_shapes(64, seed=4)
    assert a.x.shape == (64, 3, 32, 32) and a.x.dtype == np.float32 and a.y.dtype == np.int64
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    y = textured_shapes(1000, seed=0).y
    assert set(np.unique(y)) == set(range(10)) and np.bincount(y).min() > 60


def test_textured_shapes_learnable_above_chance():
    # a smaller, cleaner variant of the task so a tiny CNN gets well above chance in a few seconds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and immune to a busy machine
    try:
        torch.manual_seed(0)
        kw = dict(size=24, noise=0.1, clutter=0)
        train, test = textured_shapes(2000, seed=1, **kw), textured_shapes(300, seed=2, **kw)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveMaxPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 16, 10),
        )
        train_classifier(model, train, epochs=8, lr=3e-3)
        assert evaluate(model, test) > 0.25  # chance is 0.1
    finally:
        torch.set_num_threads(threads)


def test_models_shapes():
    with torch.no_grad():
        assert VGGSmall().eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        assert DigitsResNet().eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        assert TabularMLP().eval()(torch.zeros(2, 30)).shape == (2, 2)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in VGGSmall().modules()) >= 8


def test_tiny_mlp_learns_breast_cancer_and_splits_are_seeded():
    train, test = breast_cancer(seed=0)
    assert np.array_equal(digits(seed=1)[1].y, digits(seed=1)[1].y)
    torch.manual_seed(0)
    model = train_classifier(TabularMLP(hidden=16), train, epochs=10, lr=3e-3)
    assert evaluate(model, test) > 0.9
