import json

import numpy as np
import pytest
import torch

from scaling_assets.data.counts import InMemoryCounts
from scaling_assets.errors import InputError
from scaling_assets.models import budget as budget_mod
from scaling_assets.models import load_model, spec
from scaling_assets.models.budget import BUDGETS, Budget, ScviBudget
from scaling_assets.models.scvi import SCVIModel
from scaling_assets.models.synthetic import simulate_counts


@pytest.fixture(scope="module")
def fitted():
    train = simulate_counts(300, 120, seed=11)
    m = SCVIModel(train.var_names, budget="test", seed=0, device="cpu")
    m.fit(train)
    return train, m


def test_fit_embed_save_reload_identical(fitted, tmp_path):
    train, m = fitted
    r = m.fit_report
    assert r.epochs == 4 and r.stop_reason == "max_epochs" and r.budget == "test" and r.device == "cpu"
    # 240 training cells at batch 512: one step per epoch
    assert r.steps == 4
    h = r.history
    assert list(h["epoch"]) == [1, 2, 3, 4] and h["train_loss"].notna().all() and h["validation_loss"].notna().all()
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0]  # it learns
    test = simulate_counts(50, 120, seed=12)
    z = m.embed(test)
    assert z.shape == (50, 16) and z.dtype == np.float32
    np.testing.assert_array_equal(m.embed(test), z)  # posterior mean: deterministic
    np.testing.assert_allclose(m.embed(test, batch_size=16), z, atol=1e-5)  # BLAS blocking only
    m.save(tmp_path / "scvi")
    assert (tmp_path / "scvi" / "scvi" / "model.pt").exists()
    again = load_model(tmp_path / "scvi")
    assert isinstance(again, SCVIModel)
    np.testing.assert_array_equal(again.embed(test), z)
    assert again.fit_report.epochs == 4 and len(again.fit_report.history) == 4
    assert json.loads((tmp_path / "scvi" / "model.json").read_text())["hyperparameters"]["max_epochs"] == 4


def test_every_design_setting_lands_in_scvi_tools(fitted):
    _, m = fitted
    module = m.model.module
    assert module.n_latent == 16
    assert module.dispersion == "gene" and module.gene_likelihood == "zinb"
    assert module.latent_distribution == "normal" and module.use_observed_lib_size
    first = module.z_encoder.encoder.fc_layers[0][0]
    assert first.in_features == 120 and first.out_features == 512
    assert len(module.z_encoder.encoder.fc_layers) == 1  # one hidden layer
    dropouts = [x.p for x in module.z_encoder.encoder.fc_layers[0] if isinstance(x, torch.nn.Dropout)]
    assert dropouts == [0.1]
    assert module.z_encoder.mean_encoder.out_features == 16
    plan = m.model.trainer.lightning_module
    assert (plan.lr, plan.weight_decay, plan.eps) == (1e-3, 1e-6, 0.01)
    assert plan.optimizer_name == "Adam"
    assert plan.reduce_lr_on_plateau and plan.lr_scheduler_metric == "elbo_validation" and plan.lr_min == 1e-6
    assert (plan.lr_patience, plan.lr_factor) == (30, 0.6)
    assert (m.hyperparameters()["plan"]["lr_patience"], m.hyperparameters()["plan"]["lr_factor"]) == (30, 0.6)
    assert (plan.n_epochs_kl_warmup, plan.max_kl_weight, plan.min_kl_weight) == (1, 1.0, 0.0)
    assert plan.n_steps_kl_warmup is None
    es = m.model.trainer.early_stopping_callback
    assert (es.monitor, es.patience, es.min_delta, es.mode) == ("elbo_validation", 5, -0.01, "min")
    # 80/20 shuffled split of the 300 cells, batch 512
    assert len(m.model.train_indices) == 240 and len(m.model.validation_indices) == 60
    assert not np.array_equal(np.sort(m.model.train_indices), m.model.train_indices)
    assert m.model.trainer.max_epochs == 4


def test_early_stopping_stops(monkeypatch):
    # No epoch can improve the validation ELBO by 1e9, so training must stop after the first
    # epoch plus 5 epochs of patience, well before the 40-epoch cap.
    monkeypatch.setitem(BUDGETS, "es", Budget("es", ScviBudget(max_epochs_cap=40, early_stopping_min_delta=1e9),
                                              BUDGETS["test"].geneformer))
    train = simulate_counts(120, 40, seed=2)
    r = SCVIModel(train.var_names, budget="es").fit(train)
    assert r.stop_reason == "early_stopping" and r.epochs == 6 and len(r.history) == 6


def test_min_steps_hold_early_stopping_off(monkeypatch):
    # Nothing improves by 1e9, so early stopping ends training 6 validations after it starts counting:
    # at once without min_steps (the test above), after 10 one-step epochs with min_steps=10.
    monkeypatch.setitem(BUDGETS, "es", Budget("es", ScviBudget(max_epochs_cap=40, early_stopping_min_delta=1e9,
                                                               min_steps=10), BUDGETS["test"].geneformer))
    train = simulate_counts(120, 40, seed=2)
    m = SCVIModel(train.var_names, budget="es")
    r = m.fit(train)
    assert r.stop_reason == "early_stopping" and r.epochs == 16 and r.steps == 16
    assert m.model.trainer.early_stopping_callback.warmup_epochs == 10
    assert m.hyperparameters()["early_stopping_warmup_epochs"] == 10


def test_default_budget_trains_every_quality_past_the_warm_up():
    """What keeps SCVI's curves ordered in quality (docs/scvi-budget.md): at 100 cells an epoch is one step,
    and the reference's rules stopped after 15-30 steps wherever a 20-cell validation ELBO stalled. Under
    the default budget every quality trains its 50 warm-up steps, then stops by early stopping (a result,
    not a budget smoke test) within a few epochs."""
    from scaling_assets.data.thinning import thin_counts
    from scaling_assets.models.budget import trained_below_rules

    full = simulate_counts(100, 60, seed=4)
    X = full.read_rows(0, 100)
    for q in (1.0, 0.3):
        train = InMemoryCounts(thin_counts(X, np.arange(100), q, 42), var_names=full.var_names)
        r = SCVIModel(full.var_names, budget="default", seed=42).fit(train)
        assert r.stop_reason == "early_stopping" and 50 < r.steps <= 50 + 20, (q, r.steps)
        assert not trained_below_rules("scvi", "default", 100, r.stop_reason)


def test_the_paper_budget_is_design_section_5():
    """DESIGN §5's SCVI settings are the paper budget's: nothing the default budget changes leaks into it."""
    paper = BUDGETS["paper"].scvi
    assert (paper.max_epochs_cap, paper.early_stopping_patience, paper.early_stopping_min_delta) == (None, 5, 0.01)
    assert (paper.min_steps, paper.max_steps) == (0, None)  # early stopping from the first epoch; no step cap
    assert [paper.max_epochs(n) for n in (100, 3_000, 10_000_000, 30_000_000)] == [100_000, 3_333, 1, 1]
    assert paper.min_epochs(100) == 0 and spec.SCVI_TRAIN_SIZE == 0.8  # the 80/20 split
    assert [budget_mod.scvi_steps_per_epoch(n) for n in (100, 640, 641, 100_000)] == [1, 1, 2, 157]
    assert spec.SCVI_MODEL == dict(n_hidden=512, n_latent=16, n_layers=1, dropout_rate=0.1, dispersion="gene",
                                   gene_likelihood="zinb", latent_distribution="normal")
    plan = spec.SCVI_PLAN
    assert (plan["optimizer"], plan["lr"], plan["weight_decay"], plan["eps"]) == ("Adam", 1e-3, 1e-6, 0.01)
    assert (plan["reduce_lr_on_plateau"], plan["lr_scheduler_metric"], plan["lr_min"]) == (True, "elbo_validation", 1e-6)
    assert (plan["n_epochs_kl_warmup"], plan["min_kl_weight"], plan["max_kl_weight"]) == (1, 0.0, 1.0)
    assert spec.SCVI_BATCH == 512


def test_streaming_datamodule_path_trains_the_same_model(fitted):
    train, _ = fitted
    m = SCVIModel(train.var_names, budget="test", seed=0)
    m.in_memory_max_cells = 100  # force the streaming path
    r = m.fit(train)
    assert r.epochs == 4 and r.steps == 4 and r.history["validation_loss"].notna().all()
    z = m.embed(train)
    assert z.shape == (300, 16) and np.isfinite(z).all()


def test_parameter_count_grows_by_what_the_layers_imply():
    # Per extra gene: z-encoder first layer 512 weights, library encoder first layer 512 weights,
    # decoder heads px_scale / px_r / px_dropout Linear(512 -> G) 513 each, dispersion px_r 1:
    # 512 + 512 + 3 * 513 + 1 = 2564.
    counts = [SCVIModel([f"g{j}" for j in range(g)]).n_parameters() for g in (100, 101, 1100)]
    assert counts[1] - counts[0] == 2564
    assert counts[2] - counts[0] == 1000 * 2564
    assert counts == [spec.scvi_parameters(g) for g in (100, 101, 1100)]  # what GPU needs are sized from


def test_bad_inputs(fitted):
    train, m = fitted
    empty = InMemoryCounts(train.read_rows(0, 0), var_names=train.var_names)
    with pytest.raises(InputError, match="empty"):
        SCVIModel(train.var_names).fit(empty)
    two = InMemoryCounts(train.read_rows(0, 2), var_names=train.var_names)
    with pytest.raises(InputError, match="validation"):
        SCVIModel(train.var_names).fit(two)
    other = InMemoryCounts(train.read_rows(0, 5), var_names=[f"x{j}" for j in range(120)])
    with pytest.raises(InputError, match=r"first missing: \['gene0', 'gene1', 'gene2', 'gene3', 'gene4'\]"):
        m.embed(other)


def test_epoch_rules():
    assert budget_mod.scvi_max_epochs(100) == 100_000
    assert budget_mod.scvi_max_epochs(3_000) == 3_333
    assert budget_mod.scvi_max_epochs(10_000_000) == 1
    assert budget_mod.scvi_max_epochs(30_000_000) == 1
    assert budget_mod.geneformer_max_epochs(3_000) == 33_333
    assert budget_mod.geneformer_max_epochs(100_000_000) == 1
    assert budget_mod.geneformer_max_epochs(10_000_000) == 10
    assert BUDGETS["paper"].scvi.max_epochs(3_000) == 3_333
    default = BUDGETS["default"].scvi
    # at most 600 optimiser steps, in whole epochs: 2,400 training cells are 5 steps an epoch
    assert default.max_epochs(3_000) == 120 and default.max_epochs(100_000) == 4  # 157 steps an epoch
    # early stopping held off for 50 steps: 50 one-step epochs at 100 cells, 17 three-step ones at 1,600
    assert (default.min_epochs(100), default.min_epochs(1_600), default.min_epochs(100_000)) == (50, 17, 1)
    assert default.max_epochs(100) == 600 and default.max_epochs(200_000_000) == 1  # the epoch rule below the cap
    paper = BUDGETS["paper"].geneformer
    assert (paper.warmup_steps, paper.eval_steps, paper.early_stopping_patience, paper.max_steps) == (5000, 1000, 5, None)
    with pytest.raises(ValueError):
        budget_mod.scvi_max_epochs(0)


def test_a_single_cell_last_batch_is_dropped_not_fatal():
    # 641 cells -> 513 training cells = one full batch of 512 + a single cell (BatchNorm fails on 1)
    train = simulate_counts(641, 30, seed=5)
    r = SCVIModel(train.var_names, budget="test").fit(train)
    assert r.epochs == 4 and r.steps == 4 and np.isfinite(r.history["train_loss"]).all()
