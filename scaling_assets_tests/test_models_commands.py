import json

from scaling_assets import cli


def test_params_command_prints_built_parameter_counts(capsys):
    assert cli.main(["params", "--genes", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    algos = out["algorithms"]
    assert list(algos) == ["pca", "random_projection", "scvi", "geneformer"]
    assert algos["pca"]["n_parameters"] == 750 * 16
    assert algos["random_projection"]["n_parameters"] == 1000 * 16
    # SCVI: 2564 per gene (see test_models_scvi) plus the gene-independent layers:
    # z-encoder hidden bias 512 + BatchNorm 1024 + mean and var heads 2 x (512*16 + 16) = 17952;
    # library encoder 512 + 1024 + 2 x 513 = 2562; decoder Linear(16, 512) 8704 + BatchNorm 1024.
    assert algos["scvi"]["n_parameters"] == 2_564 * 1000 + 17_952 + 2_562 + 8_704 + 1_024
    assert [a["embedding_dim"] for a in algos.values()] == [16, 16, 16, 256]
    assert algos["geneformer"]["hyperparameters"]["warmup_steps"] == 5000
    assert algos["scvi"]["hyperparameters"]["max_epochs_cap"] is None and out["budget"] == "paper"
    cli.main(["params", "--genes", "1001"])
    more = json.loads(capsys.readouterr().out)["algorithms"]
    assert more["scvi"]["n_parameters"] - algos["scvi"]["n_parameters"] == 2564
    assert more["geneformer"]["n_parameters"] - algos["geneformer"]["n_parameters"] == 257
    assert more["pca"]["n_parameters"] == 750 * 16


def test_params_command_rejects_too_few_genes(capsys):
    assert cli.main(["params", "--genes", "3"]) == 2
    assert "at least 17" in capsys.readouterr().err
