"""Latent mutual information (LMI), after Gowri et al. (the `latentmi` package).

Each variable is z-scored and clipped to +-10; a paired autoencoder with cross-reconstruction
(each side encodes to a small latent and decodes both itself and the other side) is trained on
part of the pairs with early stopping on the held-back pairs; the KSG estimator (k = 3,
max-norm, Kraskov estimator 1) is then applied to the latents of the held-back pairs. MI in bits
is the mean pointwise MI.

Two presets (``preset`` option): ``fast`` (the default) trains 128/64-wide networks at lr 5e-3 with
one CPU thread, an "epoch" capped at 16 steps and half the pairs held back; on the Gaussian
benchmarks it gives the reference's estimates (within its seed spread) in about a second of CPU
time for 1,500 pairs. ``reference`` is latentmi's estimate (0.1.3, at the reference study's call:
30% of the pairs held back, batch 512, up to 300 full-pass epochs, Adam lr 1e-4 (eps 1e-7),
patience 30, networks 1024/512/256; minutes per estimate on a CPU), quirks included: encoders ending
in a LeakyReLU, the validation loss computed with dropout on, the last epoch's weights kept, its
batching and split, and its random streams, so that ``estimate(x, y, seed=s, preset="reference")``
equals latentmi's ``estimate(x, y, validation_split=0.3)`` after ``np.random.seed(s);
torch.manual_seed(s)`` (on one CPU thread, same torch). benchmarks/bench_lmi_reference.py runs
both side by side; benchmarks/investigations/bench_lmi_presets.py compares the presets. KSG neighbour
search uses KD-trees (max-norm radius counts), so memory stays linear in the number of pairs.

Entry points: ``estimate(x, y, seed=0, **options) -> float`` and
``estimate_pointwise(...) -> LMIResult``; options are the fields of ``LMIOptions``.
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
from torch.utils.data import DataLoader

from scaling_assets.errors import InputError

K_NEIGHBOURS = 3
# A KSG estimate on fewer held-back pairs than this is dominated by its own bias.
MIN_EVAL_PAIRS = 32


@dataclass(frozen=True)
class LMIOptions:
    latent_dim: int = 8
    # hidden-layer widths of each encoder (decoders mirror them); an int h means (h, h // 2)
    hidden: int | tuple[int, ...] = 128
    epochs: int = 100  # maximum; early stopping usually ends training after 30-50
    patience: int = 15
    min_delta: float = 1e-4  # relative drop in validation loss that counts as an improvement
    batch_size: int = 256
    # An "epoch" is a full pass or this many steps, whichever is shorter: early stopping then
    # costs the same number of steps at 30,000 pairs as at 4,000 instead of growing with n.
    max_steps_per_epoch: int = 16
    max_validation_pairs: int = 4096  # early-stopping loss on at most this many held-back pairs
    lr: float = 5e-3
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    cross_dropout: float = 0.5  # dropout on the cross decoders, as in the reference
    # held-back share: these pairs early-stop training and are the ones KSG evaluates (as in the reference)
    validation_fraction: float = 0.5
    k: int = K_NEIGHBOURS
    device: str | None = None  # None: cuda when available, else cpu
    # CPU threads torch may use during the estimate (restored afterwards). These networks are
    # small: one thread is fastest and cannot oversubscribe cores shared with other jobs.
    threads: int = 1
    # latentmi's quirks, which the `reference` preset keeps (see PRESETS for why) and `fast` leaves off:
    latent_activation: bool = False  # each encoder ends in a LeakyReLU(0.2), so the latents KSG sees are bent
    validation_dropout: bool = False  # the early-stopping loss is computed in train mode (cross-decoder dropout on)
    keep_weights: str = "best"  # "best": the lowest-validation-loss epoch's weights; "last": the last epoch's
    # "latentmi": its split (n - int(n * (1 - f)) held back, no floor), full shuffled passes whose last partial
    # batch is a step, validation loss = unweighted mean of shuffled batch losses, and its random streams
    # (numpy's legacy global RNG for the split and KSG jitter, torch's for init, shuffles and dropout), so a
    # matched seed gives latentmi's own estimate; "project": the fast sampler (_batches) and seeded jitter.
    sampling: str = "project"
    widen_inputs_above: int = 0  # a side with more features gets widths 2^floor(log2 d), /2, /4 (latentmi: 2048)

    @property
    def widths(self) -> tuple[int, ...]:
        if isinstance(self.hidden, int):
            return (self.hidden, max(self.hidden // 2, self.latent_dim))
        return tuple(int(h) for h in self.hidden)

    def widths_for(self, features: int) -> tuple[int, ...]:
        """Hidden widths of the side with this many features (latentmi widens very wide inputs)."""
        if self.widen_inputs_above and features > self.widen_inputs_above:
            top = 2 ** int(np.floor(np.log2(features)))
            return (top, top // 2, top // 4)
        return self.widths


NO_CAP = 1 << 62  # "no limit" for the step and validation caps
PRESETS = {
    "fast": {},
    # The reference study's latentmi call (Gowri et al., latentmi 0.1.3 with validation_split=0.3): full
    # passes, every held-back pair in the early-stopping loss, any decrease counts as an improvement.
    # Its quirks are kept, not fixed, because this preset must give latentmi's numbers: the published
    # figures (and any comparison with them) were made with them, and each moves MI by a few
    # hundredths of a bit on Gaussian pairs (benchmarks/bench_lmi_reference.py measures the agreement).
    "reference": dict(
        validation_fraction=0.3, batch_size=512, epochs=300, lr=1e-4, adam_eps=1e-7,
        patience=30, hidden=(1024, 512, 256), max_steps_per_epoch=NO_CAP,
        max_validation_pairs=NO_CAP, min_delta=0.0,
        # kept: latentmi's encoders end in nn.LeakyReLU(0.2) (models.AECross), which bends the latents
        latent_activation=True,
        # kept: latentmi never calls model.eval() before its validation loop, so dropout stays on there
        validation_dropout=True,
        # kept: latentmi's EarlyStopper stores model.state_dict(), an alias of the live weights, so the
        # weights it "restores" are the last epoch's
        keep_weights="last",
        # kept: latentmi's DataLoader batching (last partial batch trained on, validation loss a mean of
        # batch means), its split without a floor on held-back pairs and its seeding, for matched seeds
        sampling="latentmi",
        # kept: AECross widens the networks of a side with more than 2048 features
        widen_inputs_above=2048,
    ),
}
SAMPLINGS = ("project", "latentmi")
KEEP_WEIGHTS = ("best", "last")


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


def min_pairs(validation_fraction: float = 0.5, k: int = K_NEIGHBOURS, sampling: str = "project") -> int:
    """The fewest pairs an estimate accepts: enough held-back pairs for KSG and >= 1 to train.

    latentmi sampling accepts what latentmi accepts (k + 1 held-back pairs, one to train), since its
    estimate on small sets is what the reference preset reproduces; the project's needs 32 held back.
    """
    if sampling == "latentmi":
        n = k + 2
        while n - int(n * (1 - validation_fraction)) < k + 1 or int(n * (1 - validation_fraction)) < 1:
            n += 1
        return n
    need_eval = max(MIN_EVAL_PAIRS, k + 1)
    return max(math.ceil(need_eval / validation_fraction), need_eval + 8)


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
    """Paired autoencoder: x and y each encode to a latent that must rebuild both x and y.

    latentmi_order: initialise and run the decoders in latentmi's order (its AECross), so that the
    random draws of initialisation and dropout match it for a matched torch seed.
    """

    def __init__(self, dx: int, dy: int, latent: int, widths: tuple[int, ...], cross_dropout: float,
                 latent_activation: bool = False, widths_y: tuple[int, ...] | None = None,
                 latentmi_order: bool = False):
        super().__init__()
        hx, hy = list(widths), list(widths_y or widths)
        self.latentmi_order = latentmi_order
        self.enc_x = _mlp([dx, *hx, latent], last_activation=latent_activation)
        self.enc_y = _mlp([dy, *hy, latent], last_activation=latent_activation)
        self.dec_xx = _mlp([latent, *hx[::-1], dx])
        self.dec_yy = _mlp([latent, *hy[::-1], dy])
        self.dec_yx = _mlp([latent, *hx[::-1], dx], cross_dropout)  # y latent -> x
        self.dec_xy = _mlp([latent, *hy[::-1], dy], cross_dropout)  # x latent -> y
        nets = [self.enc_x, self.enc_y, self.dec_xx, self.dec_yy]
        nets += [self.dec_xy, self.dec_yx] if latentmi_order else [self.dec_yx, self.dec_xy]
        for net in nets:
            for m in net.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        zx, zy = self.enc_x(x), self.enc_y(y)
        mse = nn.functional.mse_loss
        if self.latentmi_order:  # AECross.learning_loss: xy decoder before yx, cross + auto
            x_auto, y_auto = self.dec_xx(zx), self.dec_yy(zy)
            y_cross = self.dec_xy(zx)
            x_cross = self.dec_yx(zy)
            auto = mse(x_auto, x) + mse(y_auto, y)
            cross = mse(x_cross, x) + mse(y_cross, y)
            return cross + auto
        auto = mse(self.dec_xx(zx), x) + mse(self.dec_yy(zy), y)
        cross = mse(self.dec_yx(zy), x) + mse(self.dec_xy(zx), y)
        return auto + cross


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


def resolve_options(options: dict) -> LMIOptions:
    """Options of one estimate: the named ``preset`` (default ``fast``), then the explicit options over it."""
    options = dict(options)
    preset = options.pop("preset", "fast")
    if preset not in PRESETS:
        raise InputError(f"unknown LMI preset {preset!r}; expected one of {sorted(PRESETS)}")
    known = set(LMIOptions.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown LMI option(s) {unknown}; expected some of {sorted(known | {'preset'})}")
    if isinstance(options.get("hidden"), list):
        options["hidden"] = tuple(options["hidden"])
    opts = LMIOptions(**{**PRESETS[preset], **options})
    if not 0 < opts.validation_fraction < 1:
        raise InputError(f"validation_fraction must be in (0, 1), got {opts.validation_fraction}")
    if min(opts.widths) < 1:
        raise InputError(f"LMI option hidden must hold positive widths, got {opts.hidden}")
    for name in ("latent_dim", "epochs", "patience", "batch_size", "k", "threads",
                 "max_steps_per_epoch", "max_validation_pairs"):
        if getattr(opts, name) < 1:
            raise InputError(f"LMI option {name} must be >= 1, got {getattr(opts, name)}")
    if opts.sampling not in SAMPLINGS:
        raise InputError(f"LMI option sampling must be one of {list(SAMPLINGS)}, got {opts.sampling!r}")
    if opts.keep_weights not in KEEP_WEIGHTS:
        raise InputError(f"LMI option keep_weights must be one of {list(KEEP_WEIGHTS)}, got {opts.keep_weights!r}")
    return opts


def estimate_pointwise(x, y, seed: int = 0, **options) -> LMIResult:
    """Latent MI between paired rows of x and y, with pointwise values.

    x: (n, dx), y: (n, dy) arrays (1-d arrays are one feature). options: fields of LMIOptions.
    A variable with no variance carries no information: the result is 0 bits with
    ``note = "constant: ..."`` instead of an error.
    """
    opts = resolve_options(options)
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
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"LMI option device={device!r} asks for a GPU but torch sees no CUDA device; use 'cpu'")

    # latentmi draws its split and KSG jitter from numpy's global RNG, seeded by its caller
    legacy_rng = np.random.RandomState(seed) if opts.sampling == "latentmi" else None
    train_idx, eval_idx = _split(n, opts, seed, legacy_rng)
    n_eval = len(eval_idx)

    constant = [name for name, a in (("x", x), ("y", y)) if np.all(a.std(axis=0) == 0)]
    if constant:
        return LMIResult(
            mi_bits=0.0, pmi=np.zeros(n_eval), eval_index=np.sort(eval_idx), n_pairs=n, n_eval=n_eval,
            epochs=0, latent_dim=opts.latent_dim, device=device,
            note=f"constant: {' and '.join(constant)} has no variance, so carries no information",
        )

    xs, ys = _standardise(x), _standardise(y)
    zx, zy, epochs, history = _train_and_embed(xs, ys, train_idx, eval_idx, opts, seed, device)
    if opts.sampling == "latentmi":
        pmi = ksg_pointwise_latentmi(zx, zy, opts.k, legacy_rng)
        by_row = np.argsort(eval_idx)  # report in row order, like the project's sampler
        pmi, eval_idx = pmi[by_row], eval_idx[by_row]
    else:
        pmi = ksg_pointwise(zx, zy, k=opts.k, seed=seed)
    return LMIResult(
        mi_bits=float(pmi.mean()), pmi=pmi, eval_index=eval_idx, n_pairs=n, n_eval=n_eval,
        epochs=epochs, latent_dim=opts.latent_dim, device=device, history=history,
    )


def estimate(x, y, seed: int = 0, **options) -> float:
    """Latent MI in bits between paired rows of x and y (see estimate_pointwise)."""
    return estimate_pointwise(x, y, seed=seed, **options).mi_bits


def _train_and_embed(xs, ys, train_idx, eval_idx, opts: LMIOptions, seed: int, device: str):
    """Train the cross autoencoder on train_idx, early-stop on eval_idx, embed eval_idx."""
    cuda_devices = [torch.device(device)] if device.startswith("cuda") else []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        # fork_rng: seed locally without disturbing the caller's global torch RNG state.
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            if cuda_devices:
                torch.cuda.manual_seed(seed)
            return _train_and_embed_seeded(xs, ys, train_idx, eval_idx, opts, seed, device)
    finally:
        torch.set_num_threads(threads_before)


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


def _train_and_embed_seeded(xs, ys, train_idx, eval_idx, opts, seed, device):
    latentmi = opts.sampling == "latentmi"
    dev = torch.device(device)
    tx = torch.as_tensor(xs[train_idx], dtype=torch.float32, device=dev)
    ty = torch.as_tensor(ys[train_idx], dtype=torch.float32, device=dev)
    vx = torch.as_tensor(xs[eval_idx], dtype=torch.float32, device=dev)
    vy = torch.as_tensor(ys[eval_idx], dtype=torch.float32, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    val_idx = torch.randperm(len(vx), generator=gen)[: opts.max_validation_pairs].to(dev)
    model = CrossAutoencoder(
        xs.shape[1], ys.shape[1], opts.latent_dim, opts.widths_for(xs.shape[1]), opts.cross_dropout,
        latent_activation=opts.latent_activation, widths_y=opts.widths_for(ys.shape[1]), latentmi_order=latentmi,
    ).to(dev)
    if latentmi:
        # latentmi's Adam is torch's default implementation; fused Adam rounds differently
        optim = torch.optim.Adam(model.parameters(), lr=opts.lr, eps=opts.adam_eps, weight_decay=opts.weight_decay)
        train_loader = _shuffled_passes(len(tx), opts.batch_size)
        val_loader = _shuffled_passes(len(vx), opts.batch_size)
    else:
        # fused Adam: one kernel for all parameters, markedly less per-step overhead on small nets
        optim = torch.optim.Adam(model.parameters(), lr=opts.lr, eps=opts.adam_eps, weight_decay=opts.weight_decay,
                                 fused=True)
        batches = _batches(len(tx), min(opts.batch_size, len(tx)), gen, dev)
        steps = min(math.ceil(len(tx) / opts.batch_size), opts.max_steps_per_epoch)
    best, best_state, since_best, history, epoch = math.inf, None, 0, [], 0
    for epoch in range(1, opts.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        train_batches = (idx.to(dev) for idx in train_loader) if latentmi else (next(batches) for _ in range(steps))
        for idx in train_batches:
            loss = model.loss(tx[idx], ty[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        model.train(opts.validation_dropout)
        with torch.no_grad():
            if latentmi:  # an unweighted mean of shuffled batch losses: a small last batch weighs as much
                val = float(np.mean([float(model.loss(vx[i.to(dev)], vy[i.to(dev)])) for i in val_loader]))
            else:
                val = float(model.loss(vx[val_idx], vy[val_idx]))
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
    with torch.no_grad():
        if latentmi:  # latentmi encodes every row, then takes the held-back ones
            zx = model.enc_x(torch.as_tensor(xs, dtype=torch.float32, device=dev))[torch.as_tensor(eval_idx)]
            zy = model.enc_y(torch.as_tensor(ys, dtype=torch.float32, device=dev))[torch.as_tensor(eval_idx)]
            zx, zy = torch.nan_to_num(zx), torch.nan_to_num(zy)
        else:
            zx, zy = model.enc_x(vx), model.enc_y(vy)
    return zx.cpu().numpy().astype(np.float64), zy.cpu().numpy().astype(np.float64), epoch, history
