"""A saved model records its format version; loading refuses another version, naming the file."""

import json

import pytest

from scaling_assets.errors import InputError
from scaling_assets.models import load_model
from scaling_assets.models.random_projection import RandomProjectionModel
from scaling_assets.models.synthetic import simulate_counts


def test_load_refuses_another_format_version(tmp_path):
    data = simulate_counts(60, 20, seed=3)
    model = RandomProjectionModel(data.var_names, seed=0)
    model.fit(data)
    model.save(tmp_path / "m")
    assert load_model(tmp_path / "m").n_parameters() == model.n_parameters()  # the current version loads
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"model.json: format_version 0, expected 1"):
        load_model(tmp_path / "m")
