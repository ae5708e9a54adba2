"""LMI's options and presets, and the fewest pairs an estimate accepts, without torch.

``metrics.lmi`` estimates; this module says what its options are, so that ``study show`` and
``study plan`` (the hyperparameter table, the pairs check) read them without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling_assets.errors import InputError

# The project's estimates (sampling="project", the `fast` preset): bumped when they change, so that MI
# measured before is redone. 2: stacked training (metrics.lmi._StackedTraining), lr 1e-2, patience 6.
PROJECT_LMI_VERSION = "lmi2"
K_NEIGHBOURS = 3
# A KSG estimate on fewer held-back pairs than this is dominated by its own bias.
MIN_EVAL_PAIRS = 32


@dataclass(frozen=True)
class LMIOptions:
    latent_dim: int = 8
    # hidden-layer widths of each encoder (decoders mirror them); an int h means (h, h // 2)
    hidden: int | tuple[int, ...] = 128
    epochs: int = 100  # maximum; early stopping usually ends training after 20-50
    # lr 1e-2 with patience 6 and a 0.1% improvement rule stops ~2x sooner than lr 5e-3, patience 15 and
    # 0.01% did, at estimates that move by less than their seed scatter (benchmarks/bench_lmi_speed.py)
    patience: int = 6
    min_delta: float = 1e-3  # relative drop in validation loss that counts as an improvement
    batch_size: int = 256
    # An "epoch" is a full pass or this many steps, whichever is shorter: early stopping then
    # costs the same number of steps at 30,000 pairs as at 4,000 instead of growing with n.
    max_steps_per_epoch: int = 16
    max_validation_pairs: int = 512  # early-stopping loss on at most this many held-back pairs
    lr: float = 1e-2
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
    if not 0 <= opts.cross_dropout < 1:
        raise InputError(f"LMI option cross_dropout must be in [0, 1), got {opts.cross_dropout}")
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
