"""A pretrained BERT-style checkpoint evaluated frozen: a study file's ``pretrained:`` entry.

    models:
      gf_frozen:
        pretrained: checkpoints/geneformer            # a Hugging Face checkpoint directory
        token_dictionary: token_dictionary.json       # optional: found beside the checkpoint
        gene_medians: gene_median_dictionary.json     # optional: found beside the checkpoint
        params: {layer: -1}                           # Geneformer's emb_layer: -1 second-to-last, 0 last

The model is never trained on the study's cells: it has no size axis (its partitions are n=0 at each
quality and seed) and gets the quality axis, MI and the noise law. Each test cell is tokenized as
Geneformer does (DESIGN §4: counts scaled to 10,000, divided by the gene's median, nonzero genes ranked
descending, ties to the lower token id, the first ``max_position_embeddings`` kept) with the
checkpoint's own token dictionary and medians; the dataset's genes outside the dictionary are left out.
Embedding: the mean over the cell's tokens of ``hidden_states[num_hidden_layers + layer]`` (the
reference's Geneformer convention); a cell none of whose genes the checkpoint knows embeds as zeros.

The checkpoint directory: ``config.json`` and the weights, either in it or in its ``hf/`` folder (a
model this platform saved: ``<root>/<dataset>/model_geneformer/<setting>/model``). Beside it:

- the token dictionary, ``{gene id: token id}`` with ``<pad>``: ``token_dictionary.json`` or
  ``dictionary.json`` (the platform's);
- the gene medians, ``{gene id: median}``: ``gene_medians.json`` or ``gene_median_dictionary.json``, or
  a ``gene_medians`` partition folder of this platform (``medians.npy`` + ``dictionary.json``), given
  as ``gene_medians:``.

Weights are read from safetensors only. A ``pytorch_model.bin`` (and a ``.pkl`` dictionary, as
Geneformer's repository ships them) is a Python pickle: unpickling runs whatever code the file names, so
a checkpoint from elsewhere could run anything on the machine that reads it. It is refused unless the
study says ``allow_pickle: true``.

Study-load checks and the planner read only ``config.json``, the dictionaries and the safetensors
headers (no torch). The model asset records the BLAKE2b of the weights; the embeddings step refuses
weights changed since.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scaling_assets.errors import InputError
from scaling_assets.models.base import FitReport, RepresentationModel, iter_csr
from scaling_assets.models.spec import GENEFORMER_HIDDEN_COPIES, _gpu_mib

PAD = "<pad>"
SAFETENSORS, SAFETENSORS_INDEX, PICKLE_WEIGHTS = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
DICTIONARY_NAMES = ("token_dictionary.json", "dictionary.json", "token_dictionary.pkl")
MEDIANS_NAMES = ("gene_medians.json", "gene_median_dictionary.json", "gene_median_dictionary.pkl")
EMBED_BATCH = {"cuda": 100, "cpu": 16}  # cells a forward pass embeds
CHUNK = 2_000  # test cells tokenized at a time
CHECKPOINT_FILE = "checkpoint.json"
PICKLE_NOTE = ("is a Python pickle: unpickling runs whatever code the file names. Convert it to safetensors "
               "(or, for a file you trust, set allow_pickle: true)")


class PickleRefused(ValueError):
    """A pickle file (weights or dictionary) where the study did not allow pickles."""


@dataclass
class Checkpoint:
    """The files of a checkpoint, found and read without torch."""

    directory: Path  # the folder given
    weights_dir: Path  # the folder with config.json and the weights
    weights: list[Path]
    config: dict[str, Any]
    token_dictionary: dict[str, int]
    dictionary_file: Path
    medians: dict[str, float]
    medians_file: Path
    allow_pickle: bool = False
    n_parameters: int = 0
    files: list[Path] = field(default_factory=list)  # what identifies it (config, dictionaries, weights)

    @property
    def pad_id(self) -> int:
        return int(self.token_dictionary.get(PAD, self.config.get("pad_token_id") or 0))

    @property
    def max_tokens(self) -> int:
        return int(self.config.get("max_position_embeddings", 512))

    def fingerprint(self) -> str:
        """Names, sizes and modification times of its files and the bytes of the small ones (config,
        dictionaries, safetensors headers): cheap enough for every definitions load; a changed file
        marks the model stale."""
        h = hashlib.sha256()
        for path in self.files:
            st = path.stat()
            h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(_safetensors_header(path) if path.suffix == ".safetensors" else
                     path.read_bytes() if st.st_size < 64 * 2**20 and path.is_file() else b"")
        return h.hexdigest()[:12]


def _safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (an 8-byte little-endian length, then the JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return f.read(length)


def _safetensors_parameters(path: Path) -> int:
    header = json.loads(_safetensors_header(path))
    return sum(int(np.prod(t["shape"])) for name, t in header.items() if name != "__metadata__")


def _read_mapping(path: Path, allow_pickle: bool, what: str) -> dict:
    if path.suffix == ".pkl":
        if not allow_pickle:
            raise PickleRefused(f"{what} {path} {PICKLE_NOTE}")
        with open(path, "rb") as f:
            mapping = pickle.load(f)  # noqa: S301 - allowed by the study (allow_pickle: true)
    else:
        mapping = json.loads(path.read_text())
    if not isinstance(mapping, dict):
        raise ValueError(f"{what} {path}: expected a mapping of gene id -> value")
    return mapping


def _find(directory: Path, names: tuple[str, ...], given: str | Path | None, what: str) -> Path:
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise ValueError(f"{what} {path} does not exist")
        return path
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise ValueError(f"no {what} beside the checkpoint {directory} (looked for {', '.join(names)}); "
                     f"give its path")


def _read_medians(path: Path, allow_pickle: bool) -> dict[str, float]:
    if path.is_dir():  # this platform's gene_medians partition: medians.npy in dictionary.json's gene order
        from scaling_assets.data.corpus import TokenDictionary

        genes = TokenDictionary.load(path / "dictionary.json").gene_ids
        values = np.load(path / "medians.npy", allow_pickle=False)
        return {g: float(v) for g, v in zip(genes, values)}
    return {str(g): float(v) for g, v in _read_mapping(path, allow_pickle, "gene medians").items()}


def read_checkpoint(directory: str | Path, token_dictionary: str | Path | None = None,
                    gene_medians: str | Path | None = None, allow_pickle: bool = False) -> Checkpoint:
    """Find and check a checkpoint's files (raises ValueError, or PickleRefused, saying what is wrong)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"checkpoint directory {directory} does not exist")
    weights_dir = directory if (directory / "config.json").exists() else directory / "hf"
    if not (weights_dir / "config.json").exists():
        raise ValueError(f"{directory} is not a Hugging Face checkpoint (no config.json in it or in hf/)")
    config = json.loads((weights_dir / "config.json").read_text())
    missing = [k for k in ("hidden_size", "num_hidden_layers") if k not in config]
    if missing:
        raise ValueError(f"{weights_dir / 'config.json'} has no {missing}: not a BERT-style encoder config")
    if (weights_dir / SAFETENSORS_INDEX).exists():
        shards = sorted(set(json.loads((weights_dir / SAFETENSORS_INDEX).read_text())["weight_map"].values()))
        weights = [weights_dir / s for s in shards]
    elif (weights_dir / SAFETENSORS).exists():
        weights = [weights_dir / SAFETENSORS]
    elif (weights_dir / PICKLE_WEIGHTS).exists():
        if not allow_pickle:
            raise PickleRefused(f"{weights_dir / PICKLE_WEIGHTS} holds the weights and there is no {SAFETENSORS}: "
                                f"{PICKLE_WEIGHTS} {PICKLE_NOTE}")
        weights = [weights_dir / PICKLE_WEIGHTS]
    else:
        raise ValueError(f"{weights_dir} has no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE_WEIGHTS})")
    dictionary_file = _find(directory, DICTIONARY_NAMES, token_dictionary, "token dictionary")
    tokens = {str(g): int(i) for g, i in _read_mapping(dictionary_file, allow_pickle, "token dictionary").items()}
    medians_file = _find(directory, MEDIANS_NAMES, gene_medians, "gene medians")
    medians = _read_medians(medians_file, allow_pickle)
    vocab = config.get("vocab_size")
    if vocab is not None and max(tokens.values(), default=0) >= vocab:
        raise ValueError(f"token dictionary {dictionary_file} has token ids up to {max(tokens.values())}, beyond the "
                         f"model's vocab_size {vocab}")
    usable = [g for g in tokens if g in medians and np.isfinite(medians[g]) and medians[g] > 0]
    if not usable:
        raise ValueError(f"no gene of the token dictionary {dictionary_file} has a positive median in {medians_file}")
    n_params = sum(_safetensors_parameters(w) for w in weights if w.suffix == ".safetensors")
    files = [weights_dir / "config.json", dictionary_file, *sorted(p for p in ([medians_file] if medians_file.is_file()
                                                                            else medians_file.iterdir())), *weights]
    return Checkpoint(directory, weights_dir, weights, config, tokens, dictionary_file, medians, medians_file,
                      allow_pickle, n_params, files)


@functools.lru_cache(maxsize=16)
def _declared(params_json: str) -> Checkpoint:
    """The checkpoint a study's params name, read once per process for the declarations below."""
    params = json.loads(params_json)
    return read_checkpoint(params["checkpoint"], params.get("token_dictionary"), params.get("gene_medians"),
                           params.get("allow_pickle", False))


def declared_checkpoint(params: dict[str, Any]) -> Checkpoint:
    return _declared(json.dumps(params, sort_keys=True, default=str))


def _blake2b(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class PretrainedBertModel(RepresentationModel):
    """A frozen BERT-style encoder over rank-value gene tokens (see the module docstring)."""

    algorithm = "pretrained"  # the study's name replaces it (ModelEntry.build)
    embedding_dim = 0  # the checkpoint's hidden_size (embedding_width)
    pretrained = True
    learns_from_cells = False
    dagster_kind = "huggingface"

    def __init__(self, gene_ids, budget="default", seed=0, device=None, *, checkpoint: str,
                 token_dictionary: str | None = None, gene_medians: str | None = None,
                 allow_pickle: bool = False, layer: int = -1, max_tokens: int | None = None):
        super().__init__(gene_ids, budget, seed, device)
        self.checkpoint = read_checkpoint(checkpoint, token_dictionary, gene_medians, allow_pickle)
        layers = int(self.checkpoint.config["num_hidden_layers"])
        if not -layers <= layer <= 0:
            raise InputError(f"{self.algorithm}: layer {layer} is outside [-{layers}, 0] (Geneformer's emb_layer: "
                             "0 the last layer, -1 the second-to-last)")
        self.layer = int(layer)
        self.max_tokens = min(self.checkpoint.max_tokens, max_tokens or self.checkpoint.max_tokens)
        self.embedding_dim = int(self.checkpoint.config["hidden_size"])
        # the dataset's genes the checkpoint knows, ordered by token id (ties go to the lower id)
        known = [(self.checkpoint.token_dictionary[g], j) for j, g in enumerate(self.gene_ids)
                 if g in self.checkpoint.token_dictionary and self.checkpoint.medians.get(g, 0) > 0]
        known.sort()
        self.token_ids = np.array([t for t, _ in known], dtype=np.int64)
        self.gene_columns = np.array([j for _, j in known], dtype=np.int64)
        self.gene_medians = np.array([self.checkpoint.medians[self.gene_ids[j]] for j in self.gene_columns])
        self.weights_blake2b: dict[str, str] = {}
        self.encoder = None  # the transformers model once loaded

    @classmethod
    def embedding_width(cls, params: dict[str, Any]) -> int:
        return int(declared_checkpoint(params).config["hidden_size"])

    @classmethod
    def gpu_mib(cls, stage: str, n_genes: int, params: dict[str, Any]) -> int:
        if stage != "embeddings":
            return 0
        c = declared_checkpoint(params)
        hidden = EMBED_BATCH["cuda"] * c.max_tokens * c.config["hidden_size"] * 4
        # as Geneformer's embedding (models/spec.py): one layer's tensors alive at a time, every layer's output kept
        return _gpu_mib(c.n_parameters * 4 + (GENEFORMER_HIDDEN_COPIES + c.config["num_hidden_layers"] + 1) * hidden)

    @classmethod
    def parameter_count(cls, n_genes: int, params: dict[str, Any]) -> int:
        return declared_checkpoint(params).n_parameters

    def hyperparameters(self) -> dict:
        c = self.checkpoint
        return {"algorithm": self.algorithm, "checkpoint": str(c.directory), "frozen": True,
                "model_type": c.config.get("model_type"), "hidden_size": c.config["hidden_size"],
                "num_hidden_layers": c.config["num_hidden_layers"], "layer": self.layer,
                "max_tokens": self.max_tokens, "token_dictionary": str(c.dictionary_file),
                "gene_medians": str(c.medians_file), "genes_in_vocabulary": len(self.token_ids),
                "embedding": "mean over the cell's tokens of hidden_states[num_hidden_layers + layer]",
                "weights": [w.name for w in c.weights]}

    def n_parameters(self) -> int:
        if self.encoder is not None:
            return int(sum(p.numel() for p in self.encoder.parameters()))
        return self.checkpoint.n_parameters

    def fit(self, train=None, validation=None, progress=False) -> FitReport:
        """Binds the checkpoint to the dataset's genes (nothing is trained): records the BLAKE2b of its weights."""
        start = time.perf_counter()
        if train is not None:
            raise InputError(f"{self.algorithm}: a pretrained model is evaluated frozen; it takes no training cells")
        if not len(self.token_ids):
            raise InputError(f"{self.algorithm}: none of the dataset's {len(self.gene_ids)} genes (first: "
                             f"{self.gene_ids[:3]}) is in the checkpoint's token dictionary "
                             f"{self.checkpoint.dictionary_file} with a median; are they the same kind of gene id?")
        self.weights_blake2b = {w.name: _blake2b(w) for w in self.checkpoint.weights}
        history = pd.DataFrame(columns=["epoch", "step", "train_loss", "validation_loss"])
        self.fit_report = FitReport(0, 0, "pretrained", None, None, time.perf_counter() - start, self.device,
                                    self.budget, history)
        return self.fit_report

    def tokenize(self, X: sp.csr_matrix) -> list[np.ndarray]:
        """The cells' token ids in the checkpoint's dictionary (rank value encoding, DESIGN §4)."""
        from scaling_assets.data.corpus import rank_value_encode

        X = sp.csr_matrix(X)
        local = rank_value_encode(X[:, self.gene_columns], self.gene_medians, self.max_tokens,
                                  totals=np.asarray(X.sum(axis=1)).ravel())  # scaled by the cell's whole total
        return [self.token_ids[c - 2] for c in local]  # rank_value_encode numbers columns from 2

    def _load_encoder(self):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # an MLM checkpoint's head weights are unused by the encoder: no warning
        hf_logging.disable_progress_bar()
        try:
            safetensors = any(w.suffix == ".safetensors" for w in self.checkpoint.weights)
            return AutoModel.from_pretrained(self.checkpoint.weights_dir, use_safetensors=safetensors).eval()
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()

    def embed(self, data, batch_size: int | None = None) -> np.ndarray:
        self._require_fitted()
        from scaling_assets.models.geneformer import embed_token_cells

        if self.encoder is None:
            self.encoder = self._load_encoder()
        columns = self._gene_columns(data.var_names)
        bs = batch_size or EMBED_BATCH["cuda" if self.device.startswith("cuda") else "cpu"]
        hidden_layer = int(self.checkpoint.config["num_hidden_layers"]) + self.layer
        parts = []
        for _, X in iter_csr(data, CHUNK, columns):
            cells = self.tokenize(X)
            parts.append(embed_token_cells(self.encoder, np.array([len(c) for c in cells]), cells.__getitem__,
                                           hidden_layer, self.checkpoint.pad_id, self.device, bs))
        return np.vstack(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    def _save_native(self, directory: Path) -> None:
        """A pointer to the checkpoint with the BLAKE2b of its weights (not a copy: one per quality and seed)."""
        (directory / CHECKPOINT_FILE).write_text(json.dumps({"weights_blake2b": self.weights_blake2b}, indent=2))

    @classmethod
    def _load_native(cls, directory: Path, meta: dict) -> PretrainedBertModel:
        model = cls(meta["gene_ids"], meta["budget"], meta["seed"], **meta["params"])
        recorded = json.loads((directory / CHECKPOINT_FILE).read_text())["weights_blake2b"]
        now = {w.name: _blake2b(w) for w in model.checkpoint.weights}
        if now != recorded:
            raise InputError(f"{meta['algorithm']}: the weights of checkpoint {model.checkpoint.weights_dir} changed "
                             f"since the model partition {directory.parent} was made; re-materialise it")
        model.weights_blake2b = recorded
        return model
