"""Published Gemma 3 vision configs leave out keys equal to transformers' defaults; the loader must not."""

import json

from mlxd.loading.loader import load_model
from tests.vlm.gemma3_fixture import model_folder


def test_context_length_defaults_to_gemma3s_when_the_config_omits_it(tmp_path):
    folder = model_folder("v5", tmp_path / "gemma3")
    config = json.loads((folder / "config.json").read_text())
    del config["text_config"]["max_position_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder, dtype="float32").context_length == 131_072
    assert load_model(model_folder("v5", tmp_path / "as-published"), dtype="float32").context_length == 2048
