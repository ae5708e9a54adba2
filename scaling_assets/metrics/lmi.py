"""Latent mutual information (LMI), after Gowri et al. (the `latentmi` package).

Each variable is z-scored and clipped to +-10; a paired autoencoder with cross-reconstruction
(each side encodes to a small latent and decodes both itself and the other side) is trained on
part of the pairs with early stopping on the held-back pairs; the KSG estimator (k = 3,
max-norm, Kraskov estimator 1) is then applied to the latents of the held-back pairs. MI in bits
is the mean pointwise MI.

Two presets (``preset`` option): ``fast`` (the default) trains 128/64-wide networks at lr 1e-2 with
one CPU thread, an "epoch" capped at 16 steps, half the pairs held back and early stopping after 6
epochs without a 0.1% drop of the loss on <= 512 held-back pairs; the estimates of one call
(``estimate_pointwise_many``: an MI step's signals) train together as one stack of networks
(``_StackedTraining``), each as it would alone. About 0.6 CPU s per estimate of 3,000 pairs,
~3.4x less than the unstacked lr 5e-3 / patience 15 estimator it replaced, at estimates that
move by less than their seed scatter (benchmarks/bench_lmi_speed.py, docs/laws.md). ``reference`` is latentmi's estimate (0.1.3, at the reference study's call:
30% of the pairs held back, batch 512, up to 300 full-pass epochs, Adam lr 1e-4 (eps 1e-7),
patience 30, networks 1024/512/256; minutes per estimate on a CPU), quirks included: encoders ending
in a LeakyReLU, the validation loss computed with dropout on, the last epoch's weights kept, its
batching and split, and its random streams, so that ``estimate(x, y, seed=s, preset="reference")``
equals latentmi's ``estimate(x, y, validation_split=0.3)`` after ``np.random.seed(s);
torch.manual_seed(s)`` (on one CPU thread, same torch). benchmarks/bench_lmi_reference.py runs
both side by side; benchmarks/investigations/bench_lmi_presets.py compares the presets. KSG neighbour
search uses KD-trees (max-norm radius counts), so memory stays linear in the number of pairs.

Entry points: ``estimate(x, y, seed=0, **options) -> float``,
``estimate_pointwise(...) -> LMIResult`` and ``estimate_pointwise_many(pairs, ...)`` (several pairs at
once); options are the fields of ``LMIOptions`` (metrics/lmi_options.py, torch-free).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import digamma
from sklearn.neighbors import KDTree
from torch import nn
from torch.optim.adam import adam as functional_adam
from torch.utils.data import DataLoader

from scaling_assets.errors import InputError
# the options live in a torch-free module (study show and plan read them); re-exported here
from scaling_assets.metrics.lmi_options import (  # noqa: F401
    K_NEIGHBOURS, KEEP_WEIGHTS, MIN_EVAL_PAIRS, NO_CAP, PRESETS, SAMPLINGS, LMIOptions, min_pairs, resolve_options)


@dataclass
class LMIResult:
    mi_bits: float
    pmi: np.ndarray  # pointwise MI (bits) of the evaluated (held-back) pairs
    eval_index: np.ndarray  # row indices of the evaluated pairs in the input
    n_pairs: int  # pairs given
    n_eval: int  # pairs the KSG estimate used
    epochs: int  # epochs trained (0 when no training was needed)
    latent_dim: int
    device: str
    note: str = ""  # "constant: ..." when a variable carries no information
    history: list[dict] = field(default_factory=list)  # per-epoch train/validation loss

    @property
    def constant(self) -> bool:
        return self.note.startswith("constant")


def _split(n: int, opts: "LMIOptions", seed: int, legacy_rng: np.random.RandomState | None):
    """(train, held-back) row indices. latentmi's order is kept: its batches and KSG jitter follow it."""
    if opts.sampling == "latentmi":
        # latentmi: np.random.seed(seed) by the caller, then np.random.shuffle and int(n * (1 - f)) to train
        order = np.arange(n)
        legacy_rng.shuffle(order)
        n_train = int(n * (1 - opts.validation_fraction))
        return order[:n_train], order[n_train:]
    order = np.random.default_rng(seed).permutation(n)
    n_eval = max(int(round(n * opts.validation_fraction)), MIN_EVAL_PAIRS)
    return order[n_eval:], np.sort(order[:n_eval])


# ----------------------------------------------------------------------------- KSG


def _paired(zx, zy, k: int) -> tuple[np.ndarray, np.ndarray]:
    zx = np.asarray(zx, dtype=np.float64).reshape(len(zx), -1)
    zy = np.asarray(zy, dtype=np.float64).reshape(len(zy), -1)
    n = len(zx)
    if n != len(zy):
        raise InputError(f"KSG needs paired rows: x has {n}, y has {len(zy)}")
    if n <= k:
        raise InputError(f"KSG with k={k} needs at least {k + 1} points, got {n}")
    return zx, zy


def _ksg_counts(zx: np.ndarray, zy: np.ndarray, k: int, strictly_inside) -> np.ndarray:
    """Kraskov 1 pointwise MI (bits) of jittered points; strictly_inside(eps) -> the counting radius."""
    n = len(zx)
    joint = np.hstack([zx, zy])
    eps = KDTree(joint, metric="chebyshev").query(joint, k=k + 1)[0][:, k]
    # Counts include the point itself (= n + 1).
    radius = strictly_inside(eps)
    nx1 = KDTree(zx, metric="chebyshev").query_radius(zx, radius, count_only=True)
    ny1 = KDTree(zy, metric="chebyshev").query_radius(zy, radius, count_only=True)
    pmi = digamma(k) + digamma(n) - digamma(nx1) - digamma(ny1)
    return pmi / np.log(2)


def ksg_pointwise(zx: np.ndarray, zy: np.ndarray, k: int = K_NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """Pointwise KSG MI (bits), Kraskov estimator 1 with max-norm.

    pmi_i = psi(k) + psi(N) - psi(n_x,i + 1) - psi(n_y,i + 1), where n_x,i counts the other
    points strictly closer than the distance to the k-th joint neighbour in the x marginal.
    KD-trees keep memory linear in N (no N x N distance matrix).
    """
    zx, zy = _paired(zx, zy, k)
    # Tiny seeded jitter breaks ties (identical latents from repeated inputs, e.g. one-hot labels).
    rng = np.random.default_rng(seed)
    zx = zx + 1e-10 * (1.0 + np.abs(zx).max()) * rng.random(zx.shape)
    zy = zy + 1e-10 * (1.0 + np.abs(zy).max()) * rng.random(zy.shape)
    # Strict inequality: shrink the radius by a hair.
    return _ksg_counts(zx, zy, k, lambda eps: np.nextafter(eps, 0))


def ksg_pointwise_latentmi(zx, zy, k: int, legacy_rng: np.random.RandomState) -> np.ndarray:
    """latentmi's ksg.mi: absolute 1e-10 jitter drawn from its numpy stream (x, then y), radius eps - 1e-15."""
    zx, zy = _paired(zx, zy, k)
    zx = zx + 1e-10 * legacy_rng.random_sample(zx.shape)
    zy = zy + 1e-10 * legacy_rng.random_sample(zy.shape)
    return _ksg_counts(zx, zy, k, lambda eps: eps - 1e-15)


def ksg_mi(zx: np.ndarray, zy: np.ndarray, k: int = K_NEIGHBOURS, seed: int = 0) -> float:
    """KSG MI estimate in bits (mean of the pointwise values)."""
    return float(ksg_pointwise(zx, zy, k=k, seed=seed).mean())


# ----------------------------------------------------------------------------- model


def _mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class CrossAutoencoder(nn.Module):
    """Paired autoencoder: x and y each encode to a latent that must rebuild both x and y; latentmi's
    AECross, whose order of initialisation and of the decoders' dropout draws the `reference` preset keeps
    (for a matched torch seed). The `fast` preset trains the same six networks stacked (_StackedTraining).
    """

    def __init__(self, dx: int, dy: int, latent: int, widths: tuple[int, ...], cross_dropout: float,
                 latent_activation: bool = False, widths_y: tuple[int, ...] | None = None):
        super().__init__()
        hx, hy = list(widths), list(widths_y or widths)
        self.enc_x = _mlp([dx, *hx, latent], last_activation=latent_activation)
        self.enc_y = _mlp([dy, *hy, latent], last_activation=latent_activation)
        self.dec_xx = _mlp([latent, *hx[::-1], dx])
        self.dec_yy = _mlp([latent, *hy[::-1], dy])
        self.dec_yx = _mlp([latent, *hx[::-1], dx], cross_dropout)  # y latent -> x
        self.dec_xy = _mlp([latent, *hy[::-1], dy], cross_dropout)  # x latent -> y
        for net in (self.enc_x, self.enc_y, self.dec_xx, self.dec_yy, self.dec_xy, self.dec_yx):
            for m in net.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """AECross.learning_loss: auto decoders, then the xy decoder before yx; cross + auto."""
        zx, zy = self.enc_x(x), self.enc_y(y)
        mse = nn.functional.mse_loss
        x_auto, y_auto = self.dec_xx(zx), self.dec_yy(zy)
        y_cross = self.dec_xy(zx)
        x_cross = self.dec_yx(zy)
        auto = mse(x_auto, x) + mse(y_auto, y)
        cross = mse(x_cross, x) + mse(y_cross, y)
        return cross + auto


# ----------------------------------------------------------------------------- estimator


def _as_matrix(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise InputError(f"{name} must be a 1-d or 2-d array (pairs x features), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise InputError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise InputError(f"{name} has NaN or infinite values in {bad} of {len(a)} rows; expected finite numbers")
    return a


def _standardise(a: np.ndarray) -> np.ndarray:
    """z-score each feature (constant features become 0) and clip to +-10."""
    sd = a.std(axis=0)
    z = (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return np.clip(z, -10.0, 10.0)


def estimate_pointwise(x, y, seed: int = 0, **options) -> LMIResult:
    """Latent MI between paired rows of x and y, with pointwise values.

    x: (n, dx), y: (n, dy) arrays (1-d arrays are one feature). options: fields of LMIOptions.
    A variable with no variance carries no information: the result is 0 bits with
    ``note = "constant: ..."`` instead of an error. An estimate of its own is a stack of one
    (see estimate_pointwise_many): it gives what it gives next to others.
    """
    return estimate_pointwise_many([(x, y)], seed=seed, **options)[0]


def estimate(x, y, seed: int = 0, **options) -> float:
    """Latent MI in bits between paired rows of x and y (see estimate_pointwise)."""
    return estimate_pointwise(x, y, seed=seed, **options).mi_bits


def estimate_pointwise_many(pairs, seed: int | list[int] = 0, names: list[str] | None = None,
                            **options) -> list[LMIResult]:
    """``estimate_pointwise`` of each (x, y) in ``pairs``, in order, with the same options.

    seed: one for all pairs or one per pair; names: what errors call each pair (default "pair i").
    Under the project's sampling, estimates on the same number of pairs train together as one
    stack of networks (one batched matmul per layer instead of one small matmul per network and
    estimate), each with its own weights, split, batches, dropout, Adam state and early stopping:
    an estimate gives the same value alone or in a stack, to float rounding (zero-padding to a
    common width can change a sum's order). latentmi sampling (the reference preset) trains each
    alone, as latentmi does. Every pair is checked before any trains.
    """
    opts = resolve_options(options)
    pairs = list(pairs)
    seeds = [int(seed)] * len(pairs) if np.ndim(seed) == 0 else [int(s) for s in seed]
    if len(seeds) != len(pairs):
        raise InputError(f"seed must be one integer or one per pair: {len(seeds)} seeds for {len(pairs)} pairs")
    if names is None:
        names = [f"pair {i}" for i in range(len(pairs))] if len(pairs) > 1 else [""]
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"LMI option device={device!r} asks for a GPU but torch sees no CUDA device; use 'cpu'")
    members = [_member(x, y, s, opts, name) for (x, y), s, name in zip(pairs, seeds, names)]

    results: list[LMIResult | None] = [None] * len(members)
    trained = []
    for i, m in enumerate(members):
        if m.constant:
            results[i] = LMIResult(
                mi_bits=0.0, pmi=np.zeros(m.n_eval), eval_index=np.sort(m.eval_idx), n_pairs=m.n, n_eval=m.n_eval,
                epochs=0, latent_dim=opts.latent_dim, device=device,
                note=f"constant: {' and '.join(m.constant)} has no variance, so carries no information",
            )
        else:
            trained.append(i)
    if opts.sampling == "latentmi":
        stacks = [[i] for i in trained]
    else:  # one stack per shape of training: same number of pairs (so the same batches) and network depths
        by_shape: dict[tuple, list[int]] = {}
        for i in trained:
            by_shape.setdefault(members[i].stack_key(opts), []).append(i)
        stacks = list(by_shape.values())

    threads_before = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        for stack in stacks:
            for i, (zx, zy, epochs, history) in zip(stack, _train_and_embed([members[i] for i in stack], opts, device)):
                results[i] = _ksg_result(members[i], zx, zy, epochs, history, opts, device)
    finally:
        torch.set_num_threads(threads_before)
    return results


@dataclass
class _Member:
    """One estimate's inputs: standardised variables, split and seed."""
    xs: np.ndarray
    ys: np.ndarray
    train_idx: np.ndarray
    eval_idx: np.ndarray
    seed: int
    constant: list[str]  # the variables with no variance
    legacy_rng: np.random.RandomState | None  # latentmi's numpy stream (split, KSG jitter)

    @property
    def n(self) -> int:
        return len(self.xs)

    @property
    def n_eval(self) -> int:
        return len(self.eval_idx)

    def stack_key(self, opts: LMIOptions) -> tuple:
        return self.n, len(opts.widths_for(self.xs.shape[1])), len(opts.widths_for(self.ys.shape[1]))


def _member(x, y, seed: int, opts: LMIOptions, name: str) -> _Member:
    """Check one pair of variables and split it; ``name`` prefixes errors."""
    try:
        x, y = _as_matrix("x", x), _as_matrix("y", y)
        n = len(x)
        if len(y) != n:
            raise InputError(f"x and y must have the same number of rows (pairs): x has {n}, y has {len(y)}")
        needed = min_pairs(opts.validation_fraction, opts.k, opts.sampling)
        if n < needed:
            raise InputError(
                f"LMI needs at least {needed} pairs (validation_fraction={opts.validation_fraction}, "
                f"k={opts.k}), got {n}"
            )
    except InputError as exc:
        if not name:
            raise
        raise InputError(f"{name}: {exc}") from None
    # latentmi draws its split and KSG jitter from numpy's global RNG, seeded by its caller
    legacy_rng = np.random.RandomState(seed) if opts.sampling == "latentmi" else None
    train_idx, eval_idx = _split(n, opts, seed, legacy_rng)
    constant = [v for v, a in (("x", x), ("y", y)) if np.all(a.std(axis=0) == 0)]
    return _Member(_standardise(x), _standardise(y), train_idx, eval_idx, seed, constant, legacy_rng)


def _ksg_result(m: _Member, zx, zy, epochs: int, history: list[dict], opts: LMIOptions, device: str) -> LMIResult:
    eval_idx = m.eval_idx
    if opts.sampling == "latentmi":
        pmi = ksg_pointwise_latentmi(zx, zy, opts.k, m.legacy_rng)
        by_row = np.argsort(eval_idx)  # report in row order, like the project's sampler
        pmi, eval_idx = pmi[by_row], eval_idx[by_row]
    else:
        pmi = ksg_pointwise(zx, zy, k=opts.k, seed=m.seed)
    return LMIResult(
        mi_bits=float(pmi.mean()), pmi=pmi, eval_index=eval_idx, n_pairs=m.n, n_eval=m.n_eval,
        epochs=epochs, latent_dim=opts.latent_dim, device=device, history=history,
    )


def _train_and_embed(members: list[_Member], opts: LMIOptions, device: str) -> list[tuple]:
    """Train each member's cross autoencoder on its training rows, early-stopped on its held-back rows;
    return (zx, zy, epochs, history) of each, zx and zy the latents of its held-back rows."""
    if opts.sampling == "latentmi":
        (m,) = members
        cuda_devices = [torch.device(device)] if device.startswith("cuda") else []
        # fork_rng: seed locally without disturbing the caller's global torch RNG state.
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(m.seed)
            if cuda_devices:
                torch.cuda.manual_seed(m.seed)
            return [_train_and_embed_latentmi(m.xs, m.ys, m.train_idx, m.eval_idx, opts, device)]
    return _StackedTraining(members, opts, device).run()


def _batches(n: int, batch: int, gen: torch.Generator, dev: torch.device):
    """Endless mini-batches over shuffled passes; a last batch under half size is dropped."""
    while True:
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            if len(idx) >= batch // 2 or start == 0:
                yield idx


def _shuffled_passes(n: int, batch: int) -> DataLoader:
    """latentmi's batches: a DataLoader with shuffle=True, whose shuffles draw from torch's global RNG
    (one draw for the iterator's base seed, one for the sampler's) and whose last partial batch is kept."""
    return DataLoader(range(n), batch_size=batch, shuffle=True)


def _train_and_embed_latentmi(xs, ys, train_idx, eval_idx, opts, device):
    """latentmi's training loop (sampling="latentmi"), on torch's global RNG as latentmi draws it."""
    dev = torch.device(device)
    tx = torch.as_tensor(xs[train_idx], dtype=torch.float32, device=dev)
    ty = torch.as_tensor(ys[train_idx], dtype=torch.float32, device=dev)
    vx = torch.as_tensor(xs[eval_idx], dtype=torch.float32, device=dev)
    vy = torch.as_tensor(ys[eval_idx], dtype=torch.float32, device=dev)
    model = CrossAutoencoder(
        xs.shape[1], ys.shape[1], opts.latent_dim, opts.widths_for(xs.shape[1]), opts.cross_dropout,
        latent_activation=opts.latent_activation, widths_y=opts.widths_for(ys.shape[1]),
    ).to(dev)
    # latentmi's Adam is torch's default implementation; fused Adam rounds differently
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr, eps=opts.adam_eps, weight_decay=opts.weight_decay)
    train_loader = _shuffled_passes(len(tx), opts.batch_size)
    val_loader = _shuffled_passes(len(vx), opts.batch_size)
    best, best_state, since_best, history, epoch = math.inf, None, 0, [], 0
    for epoch in range(1, opts.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for idx in (idx.to(dev) for idx in train_loader):
            loss = model.loss(tx[idx], ty[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        model.train(opts.validation_dropout)
        with torch.no_grad():  # an unweighted mean of shuffled batch losses: a small last batch weighs as much
            val = float(np.mean([float(model.loss(vx[i.to(dev)], vy[i.to(dev)])) for i in val_loader]))
        history.append({"epoch": epoch, "train_loss": total / seen, "validation_loss": val})
        if epoch == 1 or val < best - opts.min_delta * abs(best):
            best, since_best = val, 0
            if opts.keep_weights == "best":  # "last": latentmi's "best" state dict aliases the live weights
                best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if since_best >= opts.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():  # latentmi encodes every row, then takes the held-back ones
        zx = model.enc_x(torch.as_tensor(xs, dtype=torch.float32, device=dev))[torch.as_tensor(eval_idx)]
        zy = model.enc_y(torch.as_tensor(ys, dtype=torch.float32, device=dev))[torch.as_tensor(eval_idx)]
        zx, zy = torch.nan_to_num(zx), torch.nan_to_num(zy)
    return zx.cpu().numpy().astype(np.float64), zy.cpu().numpy().astype(np.float64), epoch, history


# ----------------------------------------------------------------------------- stacked training


@dataclass(frozen=True)
class _Role:
    """One of a cross autoencoder's six networks (CrossAutoencoder's enc_x ... dec_xy)."""
    name: str
    reads: str  # an encoder: the variable it encodes; a decoder: the variable whose latent it decodes
    side: str  # the variable that sizes it: an encoder's input, a decoder's output (the one it rebuilds)
    cross: bool = False  # a cross decoder: dropout on the inputs of each of its layers

    @property
    def encoder(self) -> bool:
        return self.name.startswith("enc")


# in CrossAutoencoder's order, which is the order of initialisation and of dropout draws
ROLES = (_Role("enc_x", "x", "x"), _Role("enc_y", "y", "y"), _Role("dec_xx", "x", "x"),
         _Role("dec_yy", "y", "y"), _Role("dec_yx", "y", "x", True), _Role("dec_xy", "x", "y", True))
# x's and y's networks share a stack when zero-padding them to one shape costs at most this much more
MERGE_COST = 1.25
DROPOUT_LEVELS = 1 << 16  # dropout keeps a unit when a uniform 16-bit draw is >= p * 2^16


def _layer_sizes(role: _Role, features: int, opts: LMIOptions) -> list[int]:
    widths = list(opts.widths_for(features))
    return [features, *widths, opts.latent_dim] if role.encoder else [opts.latent_dim, *widths[::-1], features]


def _stack_groups(sizes: dict[_Role, list[int]]) -> list[tuple[_Role, ...]]:
    """The stacks the six networks train in: encoders, then decoders, each in one stack, or one per variable
    when their depths differ or padding x's and y's networks to one shape costs more than MERGE_COST."""
    def cost(roles):  # multiply-adds of one row through the roles padded to one shape
        padded = np.max([sizes[r] for r in roles], axis=0)
        return len(roles) * int(np.dot(padded[:-1], padded[1:]))

    groups = []
    for encoder in (True, False):
        roles = [r for r in ROLES if r.encoder == encoder]
        by_side = [tuple(r for r in roles if r.side == side) for side in ("x", "y")]
        same_depth = len({len(sizes[r]) for r in roles}) == 1
        if same_depth and cost(roles) <= MERGE_COST * sum(cost(g) for g in by_side):
            groups.append(tuple(roles))
        else:
            groups.extend(by_side)
    return groups


class _StackedTraining:
    """The cross autoencoders of several estimates trained as stacks of networks.

    Each stack holds networks of one shape, zero-padded to the widest, the members' weights
    concatenated into (members * networks, fan_in, fan_out): one batched matmul per layer. A padded
    weight starts at zero and gets a zero gradient (its input or its output is zero), so it stays
    zero under Adam and every network trains as it would alone. Each member draws its
    initialisation, batches and dropout from its own streams, keeps its own parameter tensors and
    Adam state and early-stops on its own held-back pairs; a member that stops is encoded and leaves
    the stack. Batched matmuls compute each matrix as they would alone, so a member's numbers do not
    depend on the others (the stacking tests check it to the last bit on this machine).
    """

    def __init__(self, members: list[_Member], opts: LMIOptions, device: str):
        self.opts, self.dev = opts, torch.device(device)
        self.members = list(range(len(members)))  # positions (in the caller's list) of those still training
        features = [{"x": m.xs.shape[1], "y": m.ys.shape[1]} for m in members]
        self.sizes = [{r: _layer_sizes(r, f[r.side], opts) for r in ROLES} for f in features]
        widest = {r: np.max([s[r] for s in self.sizes], axis=0).tolist() for r in ROLES}  # same depths: stack_key
        self.groups = _stack_groups(widest)
        self.padded = [np.max([widest[r] for r in g], axis=0).tolist() for g in self.groups]
        self.place = {r: (gi, g.index(r)) for gi, g in enumerate(self.groups) for r in g}
        # each member's standardised variables (members, pairs, features), zero-padded to the widest member
        self.data = {"x": _padded([m.xs for m in members], self.dev), "y": _padded([m.ys for m in members], self.dev)}
        # each decoder's real output features, for its loss's mean
        self.out_features = [torch.tensor([[f[r.side] for r in g] for f in features], dtype=torch.float32,
                                          device=self.dev) for g in self.groups]
        self.eval_rows = torch.as_tensor(np.stack([m.eval_idx for m in members]), device=self.dev)
        self.train_rows = torch.as_tensor(np.stack([m.train_idx for m in members]), device=self.dev)
        streams = [np.random.SeedSequence(m.seed).spawn(3) for m in members]
        init_gens = [torch.Generator().manual_seed(_torch_seed(s[0])) for s in streams]
        batch_gens = [torch.Generator().manual_seed(_torch_seed(s[1])) for s in streams]
        self.dropout_rngs = [np.random.default_rng(s[2]) for s in streams]
        n_train, n_eval = self.train_rows.shape[1], self.eval_rows.shape[1]
        self.batch = min(opts.batch_size, n_train)
        self.steps = min(math.ceil(n_train / opts.batch_size), opts.max_steps_per_epoch)
        self.batches = [_batches(n_train, self.batch, g, self.dev) for g in batch_gens]
        self.val_rows = torch.stack([
            self.eval_rows[i, torch.randperm(n_eval, generator=g)[: opts.max_validation_pairs].to(self.dev)]
            for i, g in enumerate(batch_gens)])
        self.params = self._initial_weights(init_gens)  # per member still training
        # each member's Adam state: first and second moments and step count of each parameter tensor
        self.moments = [[[torch.zeros_like(p) for p in ps] for ps in self.params] for _ in range(2)]
        self.adam_steps = [[torch.zeros((), device=self.dev) for _ in ps] for ps in self.params]
        self.best_params: list[list[torch.Tensor]] = [[] for _ in members]

    # -- the networks

    def _initial_weights(self, gens) -> list[list[torch.Tensor]]:
        """Each member's parameters: per group, its layers' weights (networks, fan_in, fan_out), then its
        biases (networks, 1, fan_out); Xavier-uniform at the member's real shapes from its own stream,
        zero biases and padding. Tensors of its own, so that fused Adam updates them as it would alone
        (it rounds a tensor's last elements differently from the others)."""
        params = []
        for i, gen in enumerate(gens):
            tensors = [[torch.zeros(len(g), a, b) for a, b in zip(sizes[:-1], sizes[1:])]
                       for g, sizes in zip(self.groups, self.padded)]
            for role in ROLES:
                gi, k = self.place[role]
                real = self.sizes[i][role]
                for layer, (a, b) in enumerate(zip(real[:-1], real[1:])):
                    tensors[gi][layer][k, :a, :b] = nn.init.xavier_uniform_(torch.empty(a, b), generator=gen)
            biases = [[torch.zeros(len(g), 1, b) for b in sizes[1:]] for g, sizes in zip(self.groups, self.padded)]
            params.append([t.to(self.dev).requires_grad_()
                           for weights, bias in zip(tensors, biases) for t in (*weights, *bias)])
        return params

    def _layers(self, params: list[list[torch.Tensor]]):
        """(weights, biases) of each group, the members' tensors stacked: (members * networks, ...)."""
        stacked = [t[0] if len(t) == 1 else torch.cat(t) for t in zip(*params)]
        out, at = [], 0
        for sizes in self.padded:
            depth = len(sizes) - 1
            out.append((stacked[at : at + depth], stacked[at + depth : at + 2 * depth]))
            at += 2 * depth
        return out

    def _step(self, loss: torch.Tensor) -> None:
        """One Adam step of every member on its own loss: torch's fused Adam (functional form, the kernel of
        ``torch.optim.Adam(fused=True)``) over all members' tensors at once; it updates each tensor as alone."""
        params = [p for ps in self.params for p in ps]
        grads = torch.autograd.grad(loss.sum(), params)  # each member's gradient: its loss is its own term
        flat = [[t for ts in state for t in ts] for state in (*self.moments, self.adam_steps)]
        with torch.no_grad():
            functional_adam(params, list(grads), *flat[:2], [], flat[2], fused=True, amsgrad=False,
                            beta1=0.9, beta2=0.999, lr=self.opts.lr, weight_decay=self.opts.weight_decay,
                            eps=self.opts.adam_eps, maximize=False)

    def _forward(self, params, rows: torch.Tensor, masks: dict | None, decode: bool = True, first: int = 0):
        """Per-member loss (members,) on rows (members, n) of each member's data; or, with decode=False,
        the latents {"x": (members, n, latent), "y": ...}. params and rows may be those of the members
        from position ``first`` on."""
        members, n = rows.shape
        data = {side: self._rows(side, first, rows) for side in ("x", "y")}
        latents, loss = {}, 0.0
        for gi, (group, (weights, biases)) in enumerate(zip(self.groups, self._layers(params))):
            if group[0].encoder:
                inputs = _stack([data[r.reads] for r in group], self.padded[gi][0])
                out = _stacked_mlp(inputs, weights, biases, None, self.opts.latent_activation)
                latents.update({r.reads: out[k :: len(group)] for k, r in enumerate(group)})
            elif decode:
                inputs = _stack([latents[r.reads] for r in group], self.opts.latent_dim)
                out = _stacked_mlp(inputs, weights, biases, masks.get(gi) if masks else None, False)
                targets = _stack([data[r.side] for r in group], self.padded[gi][-1])
                diff = out - targets
                squared = (diff * diff).sum((1, 2)).view(members, len(group))  # padding: 0 - 0
                loss = loss + (squared / (n * self.out_features[gi][first : first + members])).sum(1)
        return loss if decode else latents

    def _rows(self, side: str, first: int, rows: torch.Tensor) -> torch.Tensor:
        """Each member's data of one variable at its rows (members, n, features), members from ``first`` on."""
        members, n = rows.shape
        data = self.data[side][first : first + members]
        total, width = data.shape[1:]
        index = (torch.arange(members, device=self.dev)[:, None] * total + rows).flatten()
        return data.reshape(-1, width).index_select(0, index).view(members, n, width)

    def _dropout_masks(self, rows: int) -> dict[int, list[torch.Tensor]] | None:
        """Each cross decoder's dropout masks (kept units scaled by 1 / (1 - p)), drawn from its member's
        stream at the member's real widths; ones for the other decoders and the padding."""
        p = self.opts.cross_dropout
        if p == 0:
            return None
        threshold, scale = round(p * DROPOUT_LEVELS), np.float32(1.0 / (1.0 - p))
        masks = {}
        for gi, group in enumerate(self.groups):
            if any(r.cross for r in group):
                masks[gi] = [np.ones((len(self.members), len(group), rows, a), np.float32) for a in self.padded[gi][:-1]]
        for i, member in enumerate(self.members):
            rng = self.dropout_rngs[member]
            for role in (r for r in ROLES if r.cross):
                gi, k = self.place[role]
                for layer, a in enumerate(self.sizes[member][role][:-1]):
                    bits = rng.integers(0, DROPOUT_LEVELS, size=(rows, a), dtype=np.uint16)
                    np.multiply(bits >= threshold, scale, out=masks[gi][layer][i, k, :, :a])
        return {gi: [torch.from_numpy(m).to(self.dev).flatten(0, 1) for m in ms] for gi, ms in masks.items()}

    # -- training

    def run(self) -> list[tuple]:
        opts = self.opts
        out: list[tuple | None] = [None] * len(self.members)
        histories = [[] for _ in self.members]
        best = [math.inf] * len(self.members)
        since_best = [0] * len(self.members)
        for epoch in range(1, opts.epochs + 1):
            total = torch.zeros(len(self.members), device=self.dev)
            seen = 0
            for _ in range(self.steps):
                pick = torch.stack([next(self.batches[m]) for m in self.members])
                rows = torch.gather(self.train_rows, 1, pick)
                loss = self._forward(self.params, rows, self._dropout_masks(rows.shape[1]))
                self._step(loss)
                total += loss.detach() * rows.shape[1]
                seen += rows.shape[1]
            val = self._validation_loss()
            train = (total / seen).tolist()
            improved, finished = [], []
            for i, member in enumerate(self.members):
                histories[member].append({"epoch": epoch, "train_loss": train[i], "validation_loss": val[i]})
                if epoch == 1 or val[i] < best[member] - opts.min_delta * abs(best[member]):
                    best[member], since_best[member] = val[i], 0
                    improved.append(i)
                else:
                    since_best[member] += 1
                    if since_best[member] >= opts.patience:
                        finished.append(i)
            if opts.keep_weights == "best":
                self._keep_best(improved)
            if epoch == opts.epochs:
                finished = list(range(len(self.members)))
            for i in finished:
                zx, zy = self._embed(i)
                out[self.members[i]] = (zx, zy, epoch, histories[self.members[i]])
            if finished:
                self._leave(finished)
            if not self.members:
                break
        return out

    def _validation_loss(self) -> list[float]:
        """Each member's loss on its held-back pairs, a batch of rows at a time: tensors of a training step's
        size are reused from the allocator's heap, where larger ones page-fault fresh memory on every pass."""
        total = torch.zeros(len(self.members), device=self.dev)
        with torch.no_grad():
            for rows in self.val_rows.split(self.batch, dim=1):
                masks = self._dropout_masks(rows.shape[1]) if self.opts.validation_dropout else None
                total += self._forward(self.params, rows, masks) * rows.shape[1]
        return (total / self.val_rows.shape[1]).tolist()

    def _keep_best(self, improved: list[int]) -> None:
        """Copy the weights of the members whose held-back loss improved."""
        for i in improved:
            self.best_params[i] = [p.detach().clone() for p in self.params[i]]

    def _embed(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Latents of member i's held-back rows under its kept weights (the best epoch's or the last)."""
        params = self.best_params[i] if self.opts.keep_weights == "best" else self.params[i]
        with torch.no_grad():
            z = self._forward([params], self.eval_rows[i : i + 1], None, decode=False, first=i)
        return tuple(z[side][0].cpu().numpy().astype(np.float64) for side in ("x", "y"))

    def _leave(self, finished: list[int]) -> None:
        """Take finished members out of the stacks, their weights and Adam state with them."""
        keep = [i for i in range(len(self.members)) if i not in finished]
        self.members = [self.members[i] for i in keep]
        if not keep:
            return
        self.params = [self.params[i] for i in keep]
        self.best_params = [self.best_params[i] for i in keep]
        self.moments = [[m[i] for i in keep] for m in self.moments]
        self.adam_steps = [self.adam_steps[i] for i in keep]
        at = torch.as_tensor(keep, device=self.dev)
        self.train_rows, self.eval_rows, self.val_rows = self.train_rows[at], self.eval_rows[at], self.val_rows[at]
        self.data = {side: d[at] for side, d in self.data.items()}
        self.out_features = [f[at] for f in self.out_features]


def _torch_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, np.uint64)[0])


def _padded(arrays: list[np.ndarray], dev: torch.device) -> torch.Tensor:
    out = np.zeros((len(arrays), len(arrays[0]), max(a.shape[1] for a in arrays)), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, :, : a.shape[1]] = a
    return torch.as_tensor(out, device=dev)


def _stack(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
    """(members, n, features) tensors of a stack's networks, zero-padded to its width: (members * networks, n, width)."""
    padded = [t if t.shape[-1] == width else nn.functional.pad(t, (0, width - t.shape[-1])) for t in tensors]
    return torch.stack(padded, 1).flatten(0, 1)


def _stacked_mlp(h, weights, biases, masks, last_activation: bool) -> torch.Tensor:
    """h (members * networks, n, fan_in) through stacked layers (members * networks, fan_in, fan_out)."""
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if masks is not None:
            h = h * masks[layer]
        h = torch.baddbmm(b, h, w)
        if layer < len(weights) - 1 or last_activation:
            h = nn.functional.leaky_relu(h, 0.2)
    return h
