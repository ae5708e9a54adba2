"""The ONE place where each asset declares its GPU need, and the run tags that carry it.

``GPU_NEEDS`` maps an asset name to a function ``(n_genes, batch_size) -> MiB``; assets not listed
need no GPU. A run's need is the max over its assets (steps run one at a time per device lease).

How the estimates were derived (fp32 training, PyTorch):
- every CUDA process pays a context of ~500 MiB before any tensor (measured range 300-600 MiB);
- training with Adam/AdamW keeps 4 fp32 copies per parameter (weight, grad, 2 moments) = 16 B/param;
- activations kept for backward are counted as the tensors of shape (batch, width) the model saves;
- everything is multiplied by SAFETY (1.25) and rounded up to 64 MiB, because the caching
  allocator fragments and cuBLAS/cuDNN take workspaces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

TAG_GPU_NEED = "scaling_assets/gpu_need_mib"
TAG_DEVICE = "scaling_assets/device"
TAG_PRIORITY = "dagster/priority"  # Dagster's own priority tag (higher dequeues first)
TAG_N_GENES = "scaling_assets/n_genes"  # optional: lets the coordinator size a run it must tag
TAG_STUDY = "scaling_assets/study"
TAG_CPU_SLOT = "scaling_assets/cpu_slot"  # "cpu": counts against the coordinator's max_cpu_runs
TAG_THREADS = "scaling_assets/threads"  # torch/BLAS threads of the run's steps

CUDA_CONTEXT_MIB = 500
SAFETY = 1.25
_MIB = 1024 * 1024
_F32 = 4

SCVI_BATCH = 512
GENEFORMER_BATCH = 64
GENEFORMER_TOKENS = 512
GENEFORMER_LAYERS, GENEFORMER_HIDDEN, GENEFORMER_HEADS, GENEFORMER_FFN = 3, 256, 4, 512


def _finish(bytes_: float) -> int:
    mib = CUDA_CONTEXT_MIB + SAFETY * bytes_ / _MIB
    return int(math.ceil(mib / 64) * 64)


def _scvi_params(n_genes: int, hidden: int = 512, latent: int = 16) -> int:  # DESIGN §5 sizes
    # encoder genes->hidden->2*latent; decoder latent->hidden->genes x 2 heads (scale, dropout);
    # per-gene dispersion.
    return n_genes * hidden + hidden * 2 * latent + latent * hidden + 2 * hidden * n_genes + n_genes


def scvi_train_mib(n_genes: int, batch_size: int = SCVI_BATCH) -> int:
    params = _scvi_params(n_genes) * 16
    # ~10 saved (batch, genes) tensors: input, log1p, scale, rate, dropout, likelihood terms + grads
    activations = 10 * batch_size * n_genes * _F32
    return _finish(params + activations)


def scvi_embed_mib(n_genes: int, batch_size: int = SCVI_BATCH) -> int:
    return _finish(_scvi_params(n_genes) * _F32 + 3 * batch_size * n_genes * _F32)


def _geneformer_params(n_genes: int) -> int:
    vocab, h, f, L = n_genes + 2, GENEFORMER_HIDDEN, GENEFORMER_FFN, GENEFORMER_LAYERS
    embeddings = vocab * h + GENEFORMER_TOKENS * h + 2 * h
    layer = 4 * h * h + 2 * h * f + 9 * h + f  # QKV+out, FFN, biases and layer norms
    mlm_head = h * h + 3 * h + vocab  # transform + decoder bias (decoder weight tied to embeddings)
    return embeddings + L * layer + mlm_head


def _geneformer_activations(n_genes: int, batch: int, training: bool) -> float:
    T, h, heads, L = GENEFORMER_TOKENS, GENEFORMER_HIDDEN, GENEFORMER_HEADS, GENEFORMER_LAYERS
    scores = batch * heads * T * T * _F32  # attention scores; eager attention keeps ~3 copies
    hidden = batch * T * h * _F32  # ~12 (batch, tokens, hidden)-sized tensors saved per layer
    logits = batch * T * (n_genes + 2) * _F32  # MLM logits over the whole vocab, ~3 copies
    if not training:  # inference frees per layer: one layer's worth alive at a time, no logits
        return 3 * scores + 12 * hidden
    return L * (3 * scores + 12 * hidden) + 3 * logits


def geneformer_train_mib(n_genes: int, batch_size: int = GENEFORMER_BATCH) -> int:
    # 3-layer BERT, hidden 256, batch 64 x 512 tokens, vocab = genes + 2, AdamW (16 B/param).
    return _finish(_geneformer_params(n_genes) * 16 + _geneformer_activations(n_genes, batch_size, True))


def geneformer_embed_mib(n_genes: int, batch_size: int = GENEFORMER_BATCH) -> int:
    return _finish(
        _geneformer_params(n_genes) * _F32 + _geneformer_activations(n_genes, batch_size, False)
    )


def lmi_train_mib(n_genes: int, batch_size: int = 512) -> int:
    # LMI: small MLP encoders on <=~256-dim embeddings; independent of genes. ~256 MiB of tensors.
    return _finish(256 * _MIB)


# asset name -> (n_genes, batch_size) -> MiB.  Anything not listed needs no GPU.
GPU_NEEDS: dict[str, Callable[..., int]] = {
    "model_scvi": scvi_train_mib,
    "model_geneformer": geneformer_train_mib,
    "embeddings_scvi": scvi_embed_mib,
    "embeddings_geneformer": geneformer_embed_mib,
    "mi_pca": lmi_train_mib,
    "mi_random_projection": lmi_train_mib,
    "mi_scvi": lmi_train_mib,
    "mi_geneformer": lmi_train_mib,
}
GPU_ASSETS: frozenset[str] = frozenset(GPU_NEEDS)  # assets whose steps take a device lease


def asset_need_mib(asset_name: str, n_genes: int, batch_size: int | None = None) -> int:
    """MiB one asset's step needs on a GPU (0: CPU-only asset)."""
    fn = GPU_NEEDS.get(_short(asset_name))
    if fn is None:
        return 0
    if n_genes <= 0:
        raise ValueError(f"n_genes must be positive, got {n_genes}")
    return fn(n_genes) if batch_size is None else fn(n_genes, batch_size)


def gpu_need_mib(asset_names: Iterable[str], n_genes: int) -> int:
    """A run's GPU need: the max over its assets (0 when none needs a GPU)."""
    return max((asset_need_mib(name, n_genes) for name in asset_names), default=0)


def _short(asset_name: str) -> str:
    # accept "model_scvi", an AssetKey's "prefix/model_scvi" or AssetKey.to_user_string()
    return asset_name.rsplit("/", 1)[-1]
