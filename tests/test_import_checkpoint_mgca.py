"""MGCA's Lightning checkpoint imported into mmrl's mgca method equals the authors' forward; the
run directory it writes is read by evaluation, export and init_from; bad inputs change nothing."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("pytorch_lightning", reason="the reference file is written by Lightning "
                    "itself (pip install 'mmrl[torch]')")

from experiments.configs import from_run  # noqa: E402
from experiments.configs import mgca as mgca_config  # noqa: E402
from mmrl.models.released import importer  # noqa: E402
from mmrl.train import released_import  # noqa: E402
from benchmarks.released_references import parity  # noqa: E402
from mmrl.models.released.source import SourceError  # noqa: E402

TOL = 1e-4
REPO = pathlib.Path(__file__).resolve().parents[1]
# A ViT with the sizes of mmrl's vit_tiny (patch 8, 64 wide, 2 blocks, 2 heads, MLP 128).
VIT = dict(image_size=32, patch=8, width=64, depth=2, heads=2, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  return parity.run_parity("mgca", tmp_path_factory.mktemp("mgca"), mgca_config.get_config(),
                           variant="vit", image_size=32, text_length=24, sizes={"vit": VIT})


@pytest.fixture(scope="module")
def run_dir(result, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "mgca_released"
  vocab = pathlib.Path(result["source"]).parent / "vocab"
  path, _ = released_import.import_checkpoint("mgca", result["source"], out, mgca_config.get_config(),
                                       tokenizer=str(vocab))
  return path


def test_mgca_vit_global_and_local_embeddings_equal_the_reference(result):
  for name, diff in result["max_abs_diff"].items():
    scale = result["scale"][name]
    assert diff < TOL and diff < TOL * scale, (name, diff, scale)  # absolute and relative


def test_mgca_import_drops_cross_attention_local_attention_and_optimiser_state(result):
  report = result["report"]
  assert report["counts"]["tensors"] == report["counts"]["imported"] + report["counts"]["dropped"]
  reasons = set(report["dropped_by_reason"])
  assert any("cross-attention" in r for r in reasons)
  assert any("use_local_atten" in r for r in reasons)
  assert any("optimiser" in r for r in reasons)
  assert "prototype_layer.weight" in report["imported"]


def test_import_writes_config_checkpoint_and_report(run_dir):
  assert (run_dir / "config.json").is_file()
  assert (run_dir / "checkpoints" / "0" / "state").is_dir()
  report = json.loads((run_dir / "import_report.json").read_text())
  assert report["format"] == "mgca" and report["counts"]["imported"] > 0
  assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]


def test_evaluation_restores_the_imported_weights(run_dir, result):
  from mmrl.evaluation import features  # pylint: disable=import-outside-toplevel
  config = from_run.get_config(str(run_dir))
  state, _, _ = features.load_for_eval(config, run_dir)
  ours = np.asarray(state.params["prototypes"]["weight"])
  src = torch.load(result["source"], weights_only=False)["state_dict"]
  np.testing.assert_array_equal(ours, src["prototype_layer.weight"].numpy())
  # The authors' forward (every token at position 0) travels with the weights.
  table = np.asarray(state.params["text_tower"]["embeddings"]["position_embeddings"]["embedding"])
  row0 = src["text_encoder_q.model.embeddings.position_embeddings.weight"][0].numpy()
  np.testing.assert_array_equal(table, np.broadcast_to(row0, table.shape))


def test_mgca_file_has_no_token_type_table_and_the_import_uses_zeros(result):
  src = torch.load(result["source"], weights_only=False)["state_dict"]
  assert not any("token_type" in k for k in src)
  assert any("token-type table" in n for n in result["report"]["notes"])
  assert result["report"]["text_positions"] == "authors"


def test_mgca_import_with_positions_0_to_L_equals_the_reference_called_that_way(tmp_path):
  r = parity.run_parity("mgca", tmp_path, mgca_config.get_config(), variant="vit",
                        image_size=32, text_length=24, sizes={"vit": VIT}, positions="arange")
  for name, diff in r["max_abs_diff"].items():
    assert diff < TOL, (name, diff)
  assert r["report"]["text_positions"] == "arange"


def test_mgca_default_import_puts_every_position_on_row_0(result):
  ours_default = importer.convert("mgca", result["source"])
  ours_arange = importer.convert("mgca", result["source"], positions="arange")
  key = ("text_tower", "embeddings", "position_embeddings", "embedding")
  assert np.all(ours_default.params[key] == ours_default.params[key][:1])
  assert not np.array_equal(ours_default.params[key], ours_arange.params[key])
  with pytest.raises(SourceError, match="--positions='zero'"):
    importer.convert("mgca", result["source"], positions="zero")


def test_a_checkpoint_of_another_format_names_the_expected_keys(result):
  with pytest.raises(SourceError, match=r"not a GLoRIA checkpoint.*global_embedder"):
    importer.convert("gloria", result["source"])
  with pytest.raises(SourceError, match="not a folder"):
    importer.convert("biovil", result["source"])


def test_a_truncated_file_is_refused_and_nothing_is_written(result, tmp_path):
  data = pathlib.Path(result["source"]).read_bytes()
  bad = tmp_path / "truncated.ckpt"
  bad.write_bytes(data[: len(data) // 2])
  out = tmp_path / "runs" / "x"
  proc = subprocess.run([sys.executable, "-m", "experiments.import_checkpoint", "--format=mgca",
                         f"--input={bad}", f"--output={out}", f"--tokenizer={bad}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "truncated" in proc.stderr, proc.stderr[-2000:]
  assert not out.exists() and not (tmp_path / "runs").exists()


def test_an_output_holding_a_run_is_refused_unless_overwrite(run_dir, result):
  vocab = pathlib.Path(result["source"]).parent / "vocab"
  before = sorted(p.name for p in run_dir.iterdir())
  with pytest.raises(released_import.OutputExistsError, match="holds a run.*--overwrite"):
    released_import.import_checkpoint("mgca", result["source"], run_dir, mgca_config.get_config(),
                               tokenizer=str(vocab))
  assert sorted(p.name for p in run_dir.iterdir()) == before
  path, _ = released_import.import_checkpoint("mgca", result["source"], run_dir,
                                       mgca_config.get_config(), tokenizer=str(vocab),
                                       overwrite=True)
  assert (path / "checkpoints" / "0").is_dir()


def test_a_checkpoint_trained_with_local_attention_layers_is_refused(result, tmp_path):
  ckpt = torch.load(result["source"], weights_only=False)
  ckpt["hyper_parameters"]["use_local_atten"] = True
  path = tmp_path / "local_atten.ckpt"
  torch.save(ckpt, str(path))
  with pytest.raises(SourceError, match="use_local_atten=True"):
    importer.convert("mgca", path)


def test_the_vocabulary_must_be_given_and_fit_the_embedding_table(result, tmp_path):
  from benchmarks.released_references import reference_torch as R  # pylint: disable=import-outside-toplevel
  converted = importer.convert("mgca", result["source"])
  with pytest.raises(SourceError, match="--tokenizer.*Bio_ClinicalBERT"):
    importer.build_config(converted, mgca_config.get_config())
  big = R.write_vocab(tmp_path / "big", 200)
  with pytest.raises(SourceError, match="200 tokens but the imported word-embedding table has 64"):
    importer.build_config(converted, mgca_config.get_config(), tokenizer=str(big))
