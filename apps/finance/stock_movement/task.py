"""Real daily prices, a synthetic stream of social posts about them, and the multi-modality
attention network (with its price-only and text-only baselines) that reads both.

Prices are real: the S&P 500 and NASDAQ composite (``arch``, 1999–2018) and Microsoft
(``pmdarima``, to 2017-11), all shipped inside the wheels. The label of (ticker, day t) is the
sign of the real return from t to t+1. The posts are SYNTHETIC: posters with identities and
hidden reputations write short texts from a small vocabulary, and an informed poster's stance is
the real next move, so the text predicts the real label by construction (planted), with a
ceiling that :func:`bayes_ceiling` computes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from snncompiler.data import Dataset

BULLISH = ("moon", "buy", "calls", "rally", "breakout", "long", "bullish", "rip")
BEARISH = ("puts", "sell", "crash", "short", "dump", "bearish", "drop", "fade")
NEUTRAL = (
    "today",
    "market",
    "chart",
    "volume",
    "earnings",
    "fed",
    "news",
    "watch",
    "open",
    "close",
    "week",
    "guys",
    "think",
    "price",
    "trade",
    "lol",
)
VOCABULARY = BULLISH + BEARISH + NEUTRAL
IDENTITY = ("verified", "log_followers", "account_years")


@dataclass
class StreamSettings:
    """The planted post stream and the split; defaults are the ones the README's tables used."""

    posters: int = 300
    posts_min: int = 4
    posts_max: int = 12  # posts per (ticker, day) ~ U{posts_min..posts_max}, zero-padded
    words: int = 8  # tokens per post
    window: int = 10  # price features: the last `window` daily log returns
    reputation_beta: float = 0.6  # hidden reputation r ~ Beta(b, b): b < 1 is bimodal
    informed_scale: float = 0.35  # a post is informed (stance = the real next move) with probability scale·r
    chasing: float = 0.7  # an uninformed post chases today's real move with this probability (else a coin flip)
    polar_word: float = 0.35  # a token is from the stance's word list with this probability,
    opposite_word: float = 0.10  # from the opposite list with this one (sarcasm, quoting), else neutral
    train_end: str = "2013-01-01"  # train: days before; validation: up to valid_end; test: from valid_end
    valid_end: str = "2015-01-01"
    seed: int = 0

    def as_dict(self) -> dict:
        """The settings as a JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class Market:
    """The three chronological splits; per split the realised next-day simple returns, dates and
    tickers (for the trading read-out) and the exact Bayes ceiling's predictions."""

    train: Dataset
    valid: Dataset
    test: Dataset
    info: dict  # split -> {"returns", "dates", "tickers", "bayes"}
    posters: np.ndarray  # [posters, 1 + len(IDENTITY)]: hidden reputation, then the identity features
    settings: StreamSettings
    stats: dict = field(default_factory=dict)

    @property
    def features(self) -> int:
        """Length of one sample's flat input vector."""
        return int(self.train.x.shape[1])


def load_prices() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{ticker: (dates as datetime64[D], adjusted close prices)} from the data shipped in the
    ``arch`` and ``pmdarima`` wheels (nothing is downloaded), from 1999 on."""
    import arch.data.nasdaq
    import arch.data.sp500
    import pmdarima.datasets

    series = {}
    for ticker, module in (("S&P 500", arch.data.sp500), ("NASDAQ", arch.data.nasdaq)):
        frame = module.load()
        series[ticker] = (frame.index.values.astype("datetime64[D]"), frame["Adj Close"].to_numpy(float))
    msft = pmdarima.datasets.load_msft()
    dates = msft["Date"].to_numpy().astype("datetime64[D]")
    keep = dates >= np.datetime64("1999-01-01")
    series["MSFT"] = (dates[keep], msft["Close"].to_numpy(float)[keep])
    return series


def _post_stance_probability(informed: np.ndarray, chase_sign: np.ndarray, move_sign: float, s: StreamSettings):
    """P(stance = +1) of posts with informed probability ``informed``, given the real next move's
    sign and today's move sign (what a chaser follows)."""
    uninformed_up = s.chasing * (chase_sign > 0) + (1 - s.chasing) * 0.5
    return informed * (np.asarray(move_sign) > 0) + (1 - informed) * uninformed_up


def generate(s: StreamSettings) -> Market:
    """Real prices → samples (ticker, day) with the last ``window`` log returns and the day's
    synthetic posts; chronological split by date (the same dates for every ticker).

    A sample's flat input: the returns (standardised with train statistics), then ``posts_max``
    slots of ``[word counts (len(VOCABULARY)) | identity (len(IDENTITY)) | present]``; unused
    slots are all zero. Label: next day's real return > 0.
    """
    rng = np.random.default_rng(s.seed)
    reputation = rng.beta(s.reputation_beta, s.reputation_beta, s.posters)
    identity = np.stack(
        [
            (reputation + rng.normal(0, 0.15, s.posters) > 0.7).astype(float),  # verified badge
            np.clip(3.0 * reputation + rng.normal(0, 0.7, s.posters), 0, None),  # log10 followers
            np.clip(6.0 * reputation + rng.normal(0, 2.0, s.posters), 0, 10) / 5.0,  # account age / 5 years
        ],
        1,
    ).astype(np.float32)
    vocab, slot = len(VOCABULARY), len(VOCABULARY) + len(IDENTITY) + 1
    nb = len(BULLISH)
    word_p = {
        +1: np.r_[
            np.full(nb, s.polar_word / nb),
            np.full(nb, s.opposite_word / nb),
            np.full(len(NEUTRAL), (1 - s.polar_word - s.opposite_word) / len(NEUTRAL)),
        ]
    }
    word_p[-1] = np.r_[word_p[+1][nb : 2 * nb], word_p[+1][:nb], word_p[+1][2 * nb :]]

    rows = []
    for ticker, (dates, prices) in load_prices().items():
        logret = np.diff(np.log(prices))  # logret[i]: day i → i+1
        simple = np.diff(prices) / prices[:-1]
        for i in range(s.window, len(logret)):  # day t = i: sees returns up to logret[i-1]
            rows.append((ticker, dates[i], logret[i - s.window : i], simple[i], logret[i - 1]))
    rows.sort(key=lambda r: (r[1], r[0]))
    n = len(rows)
    window = np.stack([r[2] for r in rows]).astype(np.float64)
    nxt = np.array([r[3] for r in rows])
    today = np.array([r[4] for r in rows])
    dates = np.array([r[1] for r in rows])
    tickers = np.array([r[0] for r in rows])
    y = (nxt > 0).astype(np.int64)

    # all posts at once: slot j of sample i is used when j < k_i
    k = rng.integers(s.posts_min, s.posts_max + 1, n)
    present = np.arange(s.posts_max)[None, :] < k[:, None]
    who = rng.integers(0, s.posters, (n, s.posts_max))
    informed_p = np.where(present, s.informed_scale * reputation[who], 0.0)
    p_up = _post_stance_probability(
        informed_p, np.broadcast_to(today[:, None], who.shape), np.where(y[:, None] == 1, 1.0, -1.0), s
    )
    stance_up = rng.random(who.shape) < p_up
    counts = rng.multinomial(s.words, np.where(stance_up[..., None], word_p[+1], word_p[-1])).astype(np.float64)
    counts[~present] = 0.0
    posts = np.zeros((n, s.posts_max, slot), np.float32)
    posts[..., :vocab] = counts
    posts[..., vocab : vocab + len(IDENTITY)] = identity[who]
    posts[..., -1] = 1.0
    posts[~present] = 0.0

    split = np.where(dates < np.datetime64(s.train_end), 0, np.where(dates < np.datetime64(s.valid_end), 1, 2))
    train = split == 0
    scale = window[train].std()
    x = np.concatenate([window / scale, posts.reshape(n, -1)], 1).astype(np.float32)
    bayes = bayes_ceiling(counts, present, informed_p, today, y[train].mean(), s)
    parts, info = [], {}
    for k, name in enumerate(("train", "valid", "test")):
        m = split == k
        parts.append(Dataset(x[m], y[m]))
        info[name] = {"returns": nxt[m], "dates": dates[m], "tickers": tickers[m], "bayes": bayes[m]}
    stats = {
        "samples": {nm: int((split == k).sum()) for k, nm in enumerate(("train", "valid", "test"))},
        "tickers": sorted(set(tickers.tolist())),
        "test_period": [str(dates[split == 2].min()), str(dates[split == 2].max())],
        "up_fraction": {nm: float(y[split == k].mean()) for k, nm in enumerate(("train", "valid", "test"))},
        "posts_per_sample": float(present.sum(1).mean()),
        "reputation_mean": float(reputation.mean()),
        "post_agrees_with_next_move": float(_agreement(counts, present, y, word_p)),
    }
    return Market(*parts, info, np.concatenate([reputation[:, None], identity], 1), s, stats)


def _agreement(counts, present, y, word_p) -> float:
    """Fraction of posts whose words lean (by likelihood) toward the real next move."""
    lean = counts @ (np.log(word_p[+1]) - np.log(word_p[-1]))
    agree = np.where(y[:, None] == 1, lean > 0, lean < 0)
    return float(agree[present & (lean != 0)].mean())


def bayes_ceiling(counts, present, informed_p, today, prior_up, s: StreamSettings) -> np.ndarray:
    """The Bayes-optimal up/down call from a day's posts, knowing what no model is told: every
    post's informed probability (its poster's hidden reputation), the word model and the
    chasing rate; it sees today's move (as the price branch does). 1 = up."""
    log_ratio = np.log(np.array([s.polar_word / len(BULLISH)])) - np.log(s.opposite_word / len(BULLISH))
    # P(words | stance=±1) ∝ ratio^(±(n_bull − n_bear)) (the neutral words cancel)
    net = counts[..., : len(BULLISH)].sum(-1) - counts[..., len(BULLISH) : 2 * len(BULLISH)].sum(-1)
    like_up, like_down = np.exp(log_ratio * net / 2), np.exp(-log_ratio * net / 2)
    chase = np.broadcast_to(today[:, None], informed_p.shape)
    evidence = np.zeros(len(counts))
    for move, sign in ((1.0, 1), (-1.0, -1)):
        p_up = _post_stance_probability(informed_p, chase, move, s)
        log_l = np.log(p_up * like_up + (1 - p_up) * like_down)
        evidence += sign * np.where(present, log_l, 0.0).sum(1)
    evidence += np.log(prior_up / (1 - prior_up))
    return (evidence > 0).astype(np.int64)


class StockMovementNet(nn.Module):
    """The multi-modality attention network over one flat input [N, window + posts·slot].

    Text branch: a per-post text encoder (bag of words → Linear → ReLU: the sum of the post's
    word embeddings), a credibility score per post from the poster's identity features (a small
    MLP), and credibility-weighted softmax attention over the day's posts (attention logit =
    content score + credibility; empty slots masked out), pooling the post vectors.
    Price branch: an MLP over the return window. Fusion: concatenation → MLP → 2 logits.
    ``mode="price"`` / ``"text"`` keep one branch (the baselines).
    """

    def __init__(
        self,
        window: int,
        posts: int,
        mode: str = "multimodal",
        text_dim: int = 12,
        price_dim: int = 16,
        cred_hidden: int = 8,
        hidden: int = 16,
    ):
        super().__init__()
        if mode not in ("multimodal", "price", "text"):
            raise ValueError(f"mode: expected multimodal, price or text, got '{mode}'")
        self.window, self.posts, self.mode = window, posts, mode
        self.vocab, self.ident = len(VOCABULARY), len(IDENTITY)
        width = 0
        if mode != "text":
            self.price = nn.Sequential(nn.Linear(window, price_dim), nn.ReLU())
            width += price_dim
        if mode != "price":
            self.encoder = nn.Sequential(nn.Linear(self.vocab, text_dim), nn.ReLU())
            self.content = nn.Linear(text_dim, 1)
            self.credibility = nn.Sequential(nn.Linear(self.ident, cred_hidden), nn.ReLU(), nn.Linear(cred_hidden, 1))
            width += text_dim
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention weights [N, posts, 1], post vectors [N, posts, text_dim])."""
        slots = x[:, self.window :].reshape(-1, self.posts, self.vocab + self.ident + 1)
        words, ident, present = slots[..., : self.vocab], slots[..., self.vocab : -1], slots[..., -1:]
        h = self.encoder(words)
        logit = self.content(h) + self.credibility(ident) + (present - 1.0) * 30.0  # empty slots: weight e^-30
        return torch.softmax(logit, dim=1), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 2] (index 1 = up)."""
        features = []
        if self.mode != "text":
            features.append(self.price(x[:, : self.window]))
        if self.mode != "price":
            weights, h = self.attention(x)
            # Σ_i α_i h_i as a mean times the slot count: the compiler has ReduceMean, not ReduceSum
            features.append((weights * h).mean(1) * float(self.posts))
        return self.head(torch.cat(features, 1) if len(features) > 1 else features[0])


def annual_return(positions: np.ndarray, returns: np.ndarray, dates: np.ndarray) -> float:
    """Annualised compound return in % per year (no costs) of holding ``positions`` (+1 long,
    −1 short) in each (ticker, day), the tickers equally weighted each day (252 trading days)."""
    days, inverse = np.unique(dates, return_inverse=True)
    daily = np.bincount(inverse, positions * returns) / np.bincount(inverse)
    growth = np.prod(1.0 + daily)
    return float(100.0 * (growth ** (252.0 / len(days)) - 1.0))
