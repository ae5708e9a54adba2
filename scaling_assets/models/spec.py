"""The models' settings and sizes without their libraries (no torch, scvi-tools or transformers).

The model classes build their networks from these settings, and the GPU scheduler, the planner and
the CPU micro-batching size memory from the same numbers, so an architecture is written down once.

GPU memory estimates: what NVML shows for the step's process at its peak, so that the run queue can
pack GPUs without running them out of memory. Calibrated on a real GPU (benchmarks/gpu_check.py,
2026-12-04: one H200, driver 580, CUDA 13.0, torch 2.11, transformers 5.17; figures in
benchmarks/gpu_check_h200*.json):
- every CUDA process pays a context before any tensor: NVML minus torch's reserved bytes was 742-758 MiB
  in all 42 processes measured (CUDA_CONTEXT_MIB);
- cuBLAS workspaces and the caching allocator's first segments: SCVI with ~60 MiB of tensors reserved
  114-172 MiB (ALLOCATOR_FLOOR_MIB);
- training with Adam/AdamW keeps 4 fp32 copies per parameter (weight, grad, 2 moments) = 16 B/param;
- activations are counted as copies of the tensors the model saves, the copies measured (below);
- tensors are multiplied by SAFETY (1.25) and rounded up to 64 MiB: the measured peaks sit 10-25%
  under the estimates at 1,000-20,000 genes.
"""

from __future__ import annotations

import math

from scaling_assets.data.corpus import MAX_LEN as MAX_TOKENS  # tokens per cell: the corpus's limit

# PCA: top highly variable genes, components kept (the embedding).
PCA_HVG, PCA_COMPONENTS = 750, 16

# SCVI (scvi-tools): the reference's architecture and training plan.
SCVI_MODEL = dict(n_hidden=512, n_latent=16, n_layers=1, dropout_rate=0.1, dispersion="gene",
                  gene_likelihood="zinb", latent_distribution="normal")
# The plateau scheduler keeps scvi-tools' defaults (patience 30 epochs, factor 0.6), which the reference
# also ran, written out so the hyperparameter table shows them. With early stopping at patience 5 the
# run ends long before 30 epochs without improvement, so the scheduler never lowers the rate.
SCVI_PLAN = dict(optimizer="Adam", lr=1e-3, weight_decay=1e-6, eps=0.01, reduce_lr_on_plateau=True,
                 lr_scheduler_metric="elbo_validation", lr_patience=30, lr_factor=0.6, lr_min=1e-6,
                 n_epochs_kl_warmup=1, max_kl_weight=1.0, min_kl_weight=0.0)
SCVI_BATCH = 512
SCVI_TRAIN_SIZE = 0.8  # the 80/20 shuffled train/validation split of a fit's N cells

# Geneformer: a 3-layer BERT over rank-value gene tokens (pad 0, mask 1, genes from 2).
GENEFORMER_BERT = dict(num_hidden_layers=3, hidden_size=256, num_attention_heads=4, intermediate_size=512,
                       max_position_embeddings=MAX_TOKENS, hidden_act="relu", attention_probs_dropout_prob=0.02,
                       hidden_dropout_prob=0.02, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0)
GENEFORMER_TRAINING = dict(learning_rate=1e-3, weight_decay=0.001, per_device_train_batch_size=64,
                           per_device_eval_batch_size=100, lr_scheduler_type="linear", optim="adamw_torch")
GENEFORMER_BATCH = GENEFORMER_TRAINING["per_device_train_batch_size"]
GENEFORMER_EMBED_BATCH = GENEFORMER_TRAINING["per_device_eval_batch_size"]  # cells a forward pass embeds on a GPU
MLM_PROBABILITY = 0.15
# On a CPU the attention activations backward keeps for 64 cells of 512 tokens take ~3.5 GB (measured:
# 4.5 GB peak RSS for one default-budget step), so the batch runs as micro-batches whose gradients
# accumulate into one optimizer step. A GPU runs the whole batch at once.
CPU_ACTIVATION_BUDGET_BYTES = 512 * 2**20
_ATTENTION_COPIES = 4  # scores, probabilities, dropout mask and dropped probabilities, per layer

CUDA_CONTEXT_MIB = 768
ALLOCATOR_FLOOR_MIB = 128
SAFETY = 1.25
# Measured copies of the big activations (torch's peak reserved bytes on the H200, fitted over 1,000, 5,000
# and 20,000 genes: linear in the genes in both models):
SCVI_SAVED_COPIES = 18  # (batch, genes) fp32 tensors: input, library-normalised rates, ZINB terms, grads
GENEFORMER_LOGIT_COPIES = 7  # fp32-sized (batch, tokens, vocab) logits: bf16 and fp32 casts, softmax, grad
GENEFORMER_HIDDEN_COPIES = 12  # (batch, tokens, hidden) tensors saved per layer
_MIB = 1024 * 1024
_F32 = 4


def scvi_parameters(n_genes: int) -> int:
    """Parameters of scvi-tools' VAE with SCVI_MODEL's sizes (one hidden layer, batch norm)."""
    h, z, g = SCVI_MODEL["n_hidden"], SCVI_MODEL["n_latent"], n_genes

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    norm = 2 * h  # batch norm weight and bias (running statistics are buffers)
    z_encoder = linear(g, h) + norm + 2 * linear(h, z)  # mean and variance heads
    library_encoder = linear(g, h) + norm + 2 * linear(h, 1)
    decoder = linear(z, h) + norm + 3 * linear(h, g) + g  # scale, r and dropout heads; per-gene dispersion
    return z_encoder + library_encoder + decoder


def geneformer_parameters(n_genes: int) -> int:
    """Parameters of the BERT for ``n_genes`` genes (vocabulary = genes + pad + mask)."""
    b = GENEFORMER_BERT
    vocab, h, f, layers = n_genes + 2, b["hidden_size"], b["intermediate_size"], b["num_hidden_layers"]
    embeddings = vocab * h + MAX_TOKENS * h + 2 * h + 2 * h  # words, positions, token types, layer norm
    layer = 4 * h * h + 2 * h * f + 9 * h + f  # QKV+out, FFN, biases and layer norms
    mlm_head = h * h + 3 * h + vocab  # transform + decoder bias (decoder weight tied to embeddings)
    return embeddings + layers * layer + mlm_head


def geneformer_attention_bytes(cells: int, tokens: int = MAX_TOKENS) -> float:
    """Attention activations one training pass keeps for backward (layers x heads x tokens^2 floats)."""
    b = GENEFORMER_BERT
    return cells * b["num_hidden_layers"] * b["num_attention_heads"] * tokens**2 * _F32 * _ATTENTION_COPIES


def geneformer_micro_batch(max_tokens: int, device: str) -> int:
    """Cells per forward pass: the whole batch on a GPU; on a CPU the largest power of two whose
    attention activations fit ``CPU_ACTIVATION_BUDGET_BYTES``."""
    if device.startswith("cuda"):
        return GENEFORMER_BATCH
    micro = GENEFORMER_BATCH
    while micro > 1 and geneformer_attention_bytes(micro, max(1, max_tokens)) > CPU_ACTIVATION_BUDGET_BYTES:
        micro //= 2
    return micro


def _gpu_mib(bytes_: float) -> int:
    mib = CUDA_CONTEXT_MIB + ALLOCATOR_FLOOR_MIB + SAFETY * bytes_ / _MIB
    return int(math.ceil(mib / 64) * 64)


def scvi_train_mib(n_genes: int, batch_size: int = SCVI_BATCH) -> int:
    return _gpu_mib(scvi_parameters(n_genes) * 16 + SCVI_SAVED_COPIES * batch_size * n_genes * _F32)


def scvi_embed_mib(n_genes: int, batch_size: int = SCVI_BATCH) -> int:
    return _gpu_mib(scvi_parameters(n_genes) * _F32 + 3 * batch_size * n_genes * _F32)


def _geneformer_activations(n_genes: int, batch: int, training: bool) -> float:
    """On a GPU: BERT's attention runs as PyTorch SDPA (transformers' default), which keeps no
    (tokens x tokens) scores, so the activations are the hidden states and the MLM logits."""
    b = GENEFORMER_BERT
    T, h, layers = MAX_TOKENS, b["hidden_size"], b["num_hidden_layers"]
    hidden = batch * T * h * _F32
    logits = batch * T * (n_genes + 2) * _F32  # MLM logits over the whole vocab
    if not training:  # embedding: one layer's tensors alive at a time, every layer's output kept, no logits
        return (GENEFORMER_HIDDEN_COPIES + layers + 1) * hidden
    return layers * GENEFORMER_HIDDEN_COPIES * hidden + GENEFORMER_LOGIT_COPIES * logits


def geneformer_train_mib(n_genes: int, batch_size: int = GENEFORMER_BATCH) -> int:
    # 3-layer BERT, hidden 256, batch 64 x 512 tokens, vocab = genes + 2, AdamW (16 B/param).
    return _gpu_mib(geneformer_parameters(n_genes) * 16 + _geneformer_activations(n_genes, batch_size, True))


def geneformer_embed_mib(n_genes: int, batch_size: int = GENEFORMER_EMBED_BATCH) -> int:
    return _gpu_mib(geneformer_parameters(n_genes) * _F32 + _geneformer_activations(n_genes, batch_size, False))


def lmi_train_mib(n_genes: int, batch_size: int = 512) -> int:
    # LMI: small MLP encoders on <=~256-dim embeddings; independent of genes. ~256 MiB of tensors.
    return _gpu_mib(256 * _MIB)
