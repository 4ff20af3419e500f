"""A planted market with credibility-weighted social posts, and the three models that read it.

The generator has a known ground truth: a latent daily "news" value drives the next day's
return; posters of high reputation report its sign reliably, the rest guess. A model sees the
last returns and the day's posts (sentiment plus the poster's identity: verified flag and
log-followers, both noisy proxies of the hidden reputation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from snncompiler.data import Dataset


@dataclass
class MarketSettings:
    """The planted process; defaults are the ones the README's table used."""

    days: int = 20000
    posters: int = 200
    posts_min: int = 8
    posts_max: int = 16          # posts per day ~ U{posts_min..posts_max}, zero-padded to posts_max
    window: int = 5              # price features: the last `window` daily returns
    news: float = 0.5            # weight of today's news in tomorrow's return
    momentum: float = 0.15       # weight of today's return in tomorrow's return
    noise: float = 1.0           # std of tomorrow's idiosyncratic return shock
    reputation_beta: float = 0.5  # reputation ~ Beta(b, b): b < 1 is bimodal
    sentiment_noise: float = 0.3  # Gaussian noise on each post's ±1 sentiment
    herding: float = 0.8         # probability that an uninformed post repeats the day's rumour (else a coin flip)
    daily_vol: float = 0.01      # returns are rescaled to this daily std (for the strategy's P&L)
    test_fraction: float = 0.25  # the last days are the test set (chronological split)
    seed: int = 0

    def as_dict(self) -> dict:
        """The settings as a JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class Market:
    """Train/test splits (x: [N, window + 3·posts_max] float32, y: 1 = up) and the test days' realised returns."""

    train: Dataset
    test: Dataset
    test_returns: np.ndarray
    settings: MarketSettings
    stats: dict = field(default_factory=dict)
    posters: np.ndarray | None = None  # [posters, 3]: hidden reputation, verified, log-followers


def generate(s: MarketSettings) -> Market:
    """Simulate ``s.days`` days and return the chronological split.

    Day t's input: returns r[t-window+1..t] (standardised with train statistics), then the
    ``posts_max`` post slots: their sentiments, then (verified, log-followers) per post; unused
    slots are all zero, so they add nothing to a sum over posts. Label: r[t+1] > 0.
    """
    rng = np.random.default_rng(s.seed)
    reputation = rng.beta(s.reputation_beta, s.reputation_beta, s.posters)
    # identity features are fixed per poster: noisy, differently shaped views of the reputation
    verified = (reputation + rng.normal(0, 0.15, s.posters) > 0.7).astype(np.float32)
    followers = np.clip(3.0 * reputation + rng.normal(0, 0.6, s.posters), 0, None).astype(np.float32)

    total = s.days + s.window
    news = rng.normal(0, 1, total)
    rumour = rng.choice([-1.0, 1.0], total)
    ret = np.zeros(total + 1)
    for t in range(total):
        ret[t + 1] = s.news * news[t] + s.momentum * ret[t] + s.noise * rng.normal()
    ret *= s.daily_vol / ret[s.window:].std()

    m = s.posts_max
    days = np.arange(s.window, total)           # day t sees returns up to r[t] and the posts of day t
    sentiment = np.zeros((len(days), m), np.float32)
    identity = np.zeros((len(days), m, 2), np.float32)
    for i, t in enumerate(days):
        k = rng.integers(s.posts_min, s.posts_max + 1)
        who = rng.integers(0, s.posters, k)
        # an informed poster (probability = reputation) reports the news' sign; the others repeat
        # the day's rumour (independent of the news) or guess: the rumour is noise shared by the
        # day's posts, which a plain average cannot cancel but a credibility gate can drop
        informed = rng.random(k) < reputation[who]
        guess = np.where(rng.random(k) < s.herding, rumour[t], rng.choice([-1.0, 1.0], k))
        sign = np.where(informed, np.sign(news[t]), guess)
        sentiment[i, :k] = sign + rng.normal(0, s.sentiment_noise, k)
        identity[i, :k, 0] = verified[who]
        identity[i, :k, 1] = followers[who]
    window = np.stack([ret[days - s.window + 1 + j] for j in range(s.window)], 1)
    nxt = ret[days + 1]
    y = (nxt > 0).astype(np.int64)

    n_test = int(round(len(days) * s.test_fraction))
    cut = len(days) - n_test
    scale = window[:cut].std()
    x = np.concatenate([window / scale, sentiment, identity.reshape(len(days), -1)], 1).astype(np.float32)
    stats = {"up_fraction_test": float(y[cut:].mean()), "reputation_mean": float(reputation.mean()),
             "verified_fraction": float(verified.mean())}
    return Market(Dataset(x[:cut], y[:cut]), Dataset(x[cut:], y[cut:]), nxt[cut:].astype(np.float64), s, stats,
                  np.stack([reputation, verified, followers], 1))


class PostNet(nn.Module):
    """Price MLP + gated sum over posts → fusion MLP → 2 logits; one flat input [N, window + 3·posts].

    ``gate="credibility"``: a per-post MLP over (verified, log-followers), shared by all posts
    (Linear layers on [N, posts, 2]: the same function as a 1×1 Conv1d, which trained about 4×
    slower in torch on this CPU), ends in Hardtanh(0, 1) — a clipped linear gate, which an
    integrate-and-fire neuron computes as its rate — that multiplies the post's sentiment.
    ``gate="uniform"``: every post weighs 1. ``gate="none"``: prices only. The sum over posts is
    a MatMul with a constant ones vector (the compiler has no ReduceSum; a constant MatMul runs
    on spikes).
    """

    def __init__(self, window: int = 5, posts: int = 16, gate: str = "credibility", hidden: int = 16,
                 cred_hidden: int = 8):
        super().__init__()
        if gate not in ("credibility", "uniform", "none"):
            raise ValueError(f"gate: expected credibility, uniform or none, got '{gate}'")
        self.window, self.posts, self.gate = window, posts, gate
        self.price = nn.Sequential(nn.Linear(window, hidden), nn.ReLU())
        if gate == "credibility":
            self.cred = nn.Sequential(nn.Linear(2, cred_hidden), nn.ReLU(), nn.Linear(cred_hidden, 1),
                                      nn.Hardtanh(0.0, 1.0), nn.Flatten())
            # start every gate inside (0, 1): outside it Hardtanh has no gradient and the gate can die
            nn.init.constant_(self.cred[2].bias, 0.5)
            nn.init.normal_(self.cred[2].weight, 0.0, 0.05)
        self.register_buffer("ones", torch.ones(posts, 1))
        self.head = nn.Sequential(nn.Linear(hidden + (gate != "none"), hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 2] for inputs [N, window + 3·posts]."""
        w, m = self.window, self.posts
        features = self.price(x[:, :w])
        if self.gate != "none":
            sentiment = x[:, w:w + m]
            if self.gate == "credibility":
                sentiment = sentiment * self.cred(x[:, w + m:].reshape(-1, m, 2))
            features = torch.cat([features, sentiment @ self.ones], 1)
        return self.head(features)
