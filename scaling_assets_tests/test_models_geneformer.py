import json

import numpy as np
import pytest
import torch

from scaling_assets.errors import InputError
from scaling_assets.models import geneformer as gf
from scaling_assets.models import spec
from scaling_assets.models import load_model
from scaling_assets.models.budget import BUDGETS, Budget, GeneformerBudget
from scaling_assets.models.geneformer import GeneformerModel, MaskingCollator, mask_tokens
from scaling_assets.models.pca import PCAModel
from scaling_assets.models.synthetic import simulate_counts
from scaling_assets.data.corpus import Corpus, TokenDictionary, build_corpus, gene_nonzero_medians

N_GENES = 40


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gf")
    src = simulate_counts(140, N_GENES, seed=21)
    train_rows, val_rows = np.arange(100), np.arange(100, 140)
    med = gene_nonzero_medians(src, rows=train_rows)
    td = TokenDictionary(src.var_names)
    build_corpus(src, tmp / "train", med, td, rows=train_rows)
    build_corpus(src, tmp / "val", med, td, rows=val_rows)
    return src, Corpus(tmp / "train"), Corpus(tmp / "val"), tmp


@pytest.fixture(scope="module")
def fitted(corpora):
    src, train, val, _ = corpora
    m = GeneformerModel(src.var_names, budget="test", seed=0, device="cpu")
    m.fit(train, val)
    return m


@pytest.mark.slow
def test_fit_embed_save_reload_identical(corpora, fitted, tmp_path):
    src, train, val, _ = corpora
    r = fitted.fit_report
    assert r.steps == 4 and r.stop_reason == "max_steps" and r.budget == "test" and r.device == "cpu"
    assert list(r.history["step"]) == [2, 4] and r.history["validation_loss"].notna().all()
    assert r.validation_loss == r.history["validation_loss"].min()  # best model kept
    z = fitted.embed(val)
    assert z.shape == (len(val), 256) and z.dtype == np.float32 and np.isfinite(z).all()
    fitted.save(tmp_path / "gf")
    assert (tmp_path / "gf" / "hf" / "config.json").exists()
    again = load_model(tmp_path / "gf", algorithm="geneformer")
    np.testing.assert_array_equal(again.embed(val), z)
    assert again.fit_report.steps == 4 and len(again.fit_report.history) == 2


@pytest.mark.slow
def test_embedding_is_the_masked_mean_of_the_second_to_last_layer(corpora, fitted):
    _, _, val, _ = corpora
    model = fitted.model.eval()
    z = fitted.embed(val, batch_size=7)
    assert fitted.hyperparameters()["emb_layer"] == -1
    for i in (0, 5):
        ids = torch.from_numpy(val[i].astype(np.int64))[None]
        with torch.no_grad():
            out = model.bert(input_ids=ids, output_hidden_states=True)
        # 3 layers: hidden_states = (embeddings, layer 1, layer 2, layer 3); Geneformer emb_layer=-1 is layer 2
        assert len(out.hidden_states) == 4
        np.testing.assert_allclose(z[i], out.hidden_states[2][0].mean(0).numpy(), atol=1e-5)
        assert not np.allclose(z[i], out.last_hidden_state[0].mean(0).numpy(), atol=1e-3)


@pytest.mark.slow
def test_design_settings_land_in_the_model_and_trainer(corpora, fitted):
    cfg = fitted.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (3, 256, 4, 512)
    assert (cfg.max_position_embeddings, cfg.hidden_act, cfg.pad_token_id) == (512, "relu", 0)
    assert (cfg.attention_probs_dropout_prob, cfg.hidden_dropout_prob) == (0.02, 0.02)
    assert (cfg.initializer_range, cfg.layer_norm_eps, cfg.vocab_size) == (0.02, 1e-12, N_GENES + 2)
    hp = fitted.hyperparameters()
    assert hp["training"] == dict(learning_rate=1e-3, weight_decay=0.001, per_device_train_batch_size=64,
                                  per_device_eval_batch_size=100, lr_scheduler_type="linear", optim="adamw_torch")
    assert hp["num_train_epochs"] == 10 * 10_000_000 // 100 and hp["budget"] == "test"
    assert (hp["micro_batch_size"], hp["gradient_accumulation_steps"]) == (64, 1)  # 40-token cells: one pass
    paper = GeneformerModel([f"g{j}" for j in range(5)], budget="paper").hyperparameters()
    assert (paper["warmup_steps"], paper["eval_steps"], paper["early_stopping_patience"]) == (5000, 1000, 5)


@pytest.mark.slow
def test_cpu_micro_batches_accumulate_to_the_one_batch_gradient():
    # 512-token cells take ~50 MB of attention activations each on a CPU: 8 per pass, 8 passes a step.
    assert spec.geneformer_micro_batch(512, "cpu") == 8 and spec.geneformer_micro_batch(100, "cpu") == 64
    assert spec.geneformer_micro_batch(512, "cuda:0") == 64
    rng = np.random.default_rng(3)
    cells = [{"input_ids": rng.integers(2, 32, size=rng.integers(5, 40))} for _ in range(64)]
    batch = MaskingCollator(32, seed=1)(cells)
    model = GeneformerModel([f"g{j}" for j in range(30)])._build().eval()  # no dropout: same network twice
    masked = (batch["labels"] != -100).sum()

    def gradients(slices):
        model.zero_grad()
        for sl in slices:
            out = model(input_ids=batch["input_ids"][sl], attention_mask=batch["attention_mask"][sl])
            gf.masked_lm_loss(out, batch["labels"][sl], masked).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole, accumulated = gradients([slice(0, 64)]), gradients([slice(i, i + 8) for i in range(0, 64, 8)])
    for a, b in zip(whole, accumulated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(gf.masked_lm_loss(out, batch["labels"]),  # alone: the mean over masked tokens
                               torch.nn.functional.cross_entropy(out.logits.reshape(-1, 32), batch["labels"].reshape(-1)))


@pytest.mark.slow
def test_accumulated_training_reports_the_batch_loss(corpora, monkeypatch):
    # A tiny activation budget forces 2-cell micro-batches (32 per step). The logged training loss must
    # stay the batch mean (near ln(vocab) for a fresh model), not 32 micro-batch means added up.
    src, train, val, _ = corpora
    monkeypatch.setattr(spec, "CPU_ACTIVATION_BUDGET_BYTES", 2 * 3 * 4 * int(np.max(train.lengths)) ** 2 * 16)
    m = GeneformerModel(src.var_names, budget="test", seed=0, device="cpu")
    r = m.fit(train, val)
    hp = m.hyperparameters()
    assert (hp["micro_batch_size"], hp["gradient_accumulation_steps"], r.steps) == (2, 32, 4)
    assert 0.5 * np.log(N_GENES + 2) < r.train_loss < 1.5 * np.log(N_GENES + 2)


def test_bert_masking_rates_and_collator_padding():
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 1002, size=200_000)
    x, y = mask_tokens(tokens, rng, 1002)
    selected = y != -100
    assert abs(selected.mean() - 0.15) < 0.005
    np.testing.assert_array_equal(y[selected], tokens[selected])
    assert abs((x[selected] == 1).mean() - 0.8) < 0.01
    unchanged = (x[selected] == tokens[selected]).mean()
    assert abs(unchanged - 0.1) < 0.01  # (a random swap can also hit the same token: 1/1000)
    np.testing.assert_array_equal(x[~selected], tokens[~selected])
    assert (x >= 1).all()  # never the pad id
    batch = MaskingCollator(10, seed=0)([{"input_ids": np.array([5, 6, 7])}, {"input_ids": np.array([8])}])
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"][1, 1:].tolist() == [-100, -100] and (batch["labels"][1, 0] == 8)  # one forced


def test_parameter_count_grows_by_257_per_gene():
    # Per extra gene: a 256-d word embedding and one LM-head bias; the decoder weight is tied to the
    # word embedding (counted once).
    m = GeneformerModel([f"g{j}" for j in range(100)])
    bert = m._build()
    assert bert.cls.predictions.decoder.weight is bert.bert.embeddings.word_embeddings.weight
    counts = [GeneformerModel([f"g{j}" for j in range(g)]).n_parameters() for g in (100, 101, 1100)]
    assert counts[1] - counts[0] == 257 and counts[2] - counts[0] == 1000 * 257
    assert counts == [spec.geneformer_parameters(g) for g in (100, 101, 1100)]  # what GPU needs are sized from


@pytest.mark.slow
def test_early_stopping_stops(corpora, monkeypatch):
    # With a zero learning rate and fixed validation masks every evaluation gives the same loss,
    # so with patience 1 the second evaluation ends training long before the step cap.
    src, train, val, _ = corpora
    monkeypatch.setitem(BUDGETS, "es", Budget("es", BUDGETS["test"].scvi,
                        GeneformerBudget(max_steps=50, warmup_steps=0, eval_steps=1,
                                         early_stopping_patience=1, eval_max_cells=8)))
    monkeypatch.setitem(gf.TRAINING, "learning_rate", 0.0)
    r = GeneformerModel(src.var_names, budget="es").fit(train, val)
    assert r.stop_reason == "early_stopping" and r.steps == 2
    assert r.history["validation_loss"].nunique() == 1


@pytest.mark.slow
def test_checkpoints_are_marked_complete(corpora, tmp_path):
    src, train, val, _ = corpora
    m = GeneformerModel(src.var_names, budget="test")
    m.fit(train, val, checkpoint_dir=tmp_path / "ckpt")
    done = sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint-*"))
    assert done == ["checkpoint-2", "checkpoint-4"]
    assert gf.latest_complete_checkpoint(tmp_path / "ckpt").name == "checkpoint-4"
    (tmp_path / "ckpt" / "checkpoint-4" / gf.COMPLETE_MARKER).unlink()  # as if killed mid-write
    assert gf.latest_complete_checkpoint(tmp_path / "ckpt").name == "checkpoint-2"


@pytest.mark.slow
def test_bad_inputs(corpora, fitted, tmp_path):
    src, train, val, tmp = corpora
    # a corpus built with another dictionary
    other = simulate_counts(30, N_GENES, seed=3, gene_prefix="x")
    build_corpus(other, tmp_path / "other", gene_nonzero_medians(other), TokenDictionary(other.var_names))
    with pytest.raises(InputError, match="different token dictionary"):
        fitted.embed(Corpus(tmp_path / "other"))
    with pytest.raises(InputError, match="different token dictionary"):
        GeneformerModel(src.var_names, budget="test").fit(Corpus(tmp_path / "other"), val)
    with pytest.raises(InputError, match="must be a tokenized Corpus"):
        fitted.embed(src)
    # empty training corpus, missing / empty validation corpus
    med = gene_nonzero_medians(src)
    td = TokenDictionary(src.var_names)
    build_corpus(src, tmp_path / "empty", med, td, rows=np.array([], dtype=int))
    empty = Corpus(tmp_path / "empty")
    m = GeneformerModel(src.var_names, budget="test")
    with pytest.raises(InputError, match="training corpus is empty"):
        m.fit(empty, val)
    with pytest.raises(InputError, match="validation corpus is required"):
        m.fit(train)
    with pytest.raises(InputError, match="validation corpus has no cells"):
        m.fit(train, empty)
    # Geneformer embeddings asked of a directory holding another algorithm
    pca = PCAModel(src.var_names)
    pca.fit(src)
    pca.save(tmp_path / "pca")
    with pytest.raises(InputError, match="holds a 'pca' model, not 'geneformer'"):
        GeneformerModel.load(tmp_path / "pca")
    meta = json.loads((tmp_path / "pca" / "model.json").read_text())
    assert meta["algorithm"] == "pca"
