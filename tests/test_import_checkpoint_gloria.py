"""GLoRIA's Lightning checkpoint (written by Lightning with its OmegaConf hyper-parameters) imports,
from the command line too, and equals the authors' forward; hparams that disagree are refused."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")
pytest.importorskip("pytorch_lightning", reason="the reference file is written by Lightning "
                    "itself (pip install 'mmrl[torch]')")
pytest.importorskip("omegaconf")

from experiments.configs import gloria as gloria_config  # noqa: E402
from benchmarks.released_references import parity  # noqa: E402
from mmrl.models.released import importer  # noqa: E402
from mmrl.train import released_import  # noqa: E402
from mmrl.models.released.source import SourceError  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

TOL = 1e-4


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  # ResNet-50 (the format's), 64 px inputs upsampled to 299 inside the encoder as GLoRIA does;
  # a 4-layer 64-wide BERT.
  return parity.run_parity("gloria", tmp_path_factory.mktemp("gloria"),
                           gloria_config.get_config(), image_size=64, text_length=24)


def test_gloria_global_and_local_embeddings_equal_the_reference(result):
  for name, diff in result["max_abs_diff"].items():
    scale = result["scale"][name]
    assert diff < TOL and diff < TOL * scale, (name, diff, scale)  # absolute and relative


def test_gloria_import_accounts_for_every_tensor(result):
  report = result["report"]
  counts = report["counts"]
  assert counts["tensors"] == counts["imported"] + counts["dropped"]
  reasons = " ".join(d["reason"] for d in report["dropped"].values())
  assert "optimiser" in reasons and "pooler" in reasons
  assert not any(n.startswith("optimizer_states") for n in report["imported"])
  # Every model tensor but the pooler and BatchNorm counters is imported.
  dropped_model = [n for n in report["dropped"] if n.startswith("gloria.")]
  assert all("pooler" in n or n.endswith("num_batches_tracked") for n in dropped_model)


def test_gloria_config_reproduces_the_authors_text_and_image_choices(result):
  c = result["config"]
  assert c.model.text.sum_last_layers == 4
  assert c.model.text.global_pool == "mean_positions"
  assert c.model.image.local_stage == 3 and c.model.image.resize_to == 299
  assert (c.data.mean, c.data.std) == (0.5, 0.5)


def test_align_corners_resize_equals_torch_upsample():
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mmrl.models.resnet import resize_align_corners  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).normal(size=(2, 7, 10, 3)).astype(np.float32)
  ours = np.asarray(resize_align_corners(x, 13))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(13, 13),
                                        mode="bilinear", align_corners=True)
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_gloria_file_is_lightnings_own_with_an_omegaconf_hparams_object(result):
  from omegaconf import DictConfig  # pylint: disable=import-outside-toplevel
  ckpt = torch.load(result["source"], weights_only=False)
  assert isinstance(ckpt["hyper_parameters"], DictConfig)
  assert ckpt["hyper_parameters"].model.text.bert_type  # what load_gloria reads
  assert "native_amp_scaling_state" in ckpt and ckpt["optimizer_states"][0]["state"]
  assert any(isinstance(k, type) for k in ckpt["callbacks"])  # 1.1.x: keyed by class


def test_gloria_release_imports_from_the_command_line(result, tmp_path):
  vocab = pathlib.Path(result["source"]).parent / "vocab"
  out = tmp_path / "runs" / "gloria"
  proc = subprocess.run([sys.executable, "-m", "experiments.import_checkpoint", "--format=gloria",
                         f"--input={result['source']}", f"--output={out}", f"--tokenizer={vocab}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "import_report.json").read_text())
  assert report["counts"]["tensors"] == report["counts"]["imported"] + report["counts"]["dropped"]
  assert any(n.startswith("native_amp_scaling_state") or n.startswith("callbacks")
             for n in report["dropped"])


def _edited(result, tmp_path, edit):
  ckpt = torch.load(result["source"], weights_only=False)
  edit(ckpt)
  path = tmp_path / "edited.ckpt"
  torch.save(ckpt, str(path))
  return path


def test_a_dictconfig_whose_bert_type_names_another_width_is_refused(result, tmp_path):
  def edit(ckpt):
    ckpt["hyper_parameters"].model.text.bert_type = "bert-large-uncased"
  with pytest.raises(SourceError, match=r"bert_type='bert-large-uncased' is 1024 wide.*64 wide"):
    importer.convert("gloria", _edited(result, tmp_path, edit))


def test_a_dictconfig_whose_embedding_dim_disagrees_with_the_heads_is_refused(result, tmp_path):
  def edit(ckpt):
    ckpt["hyper_parameters"].model.text.embedding_dim = 7
  with pytest.raises(SourceError, match="embedding_dim=7.*disagree"):
    importer.convert("gloria", _edited(result, tmp_path, edit))


def test_an_unexpected_structure_is_the_importers_error_not_a_traceback(result, tmp_path):
  def edit(ckpt):
    ckpt["state_dict"] = [1, 2]
  with pytest.raises(SourceError, match=r"edited.ckpt.*'state_dict'.*list"):
    importer.convert("gloria", _edited(result, tmp_path, edit))


def test_a_cyclic_hparams_object_is_read_without_recursion(tmp_path):
  from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
  from mmrl.models.released import source  # pylint: disable=import-outside-toplevel
  cfg = OmegaConf.create({"model": {"text": {"last_n_layers": 4}}, "l": [1, {"a": 2}]})
  torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": cfg,
              "hparams_type": type(cfg)}, str(tmp_path / "c.ckpt"))
  obj = source.load_torch_file(tmp_path / "c.ckpt")
  assert [n for n, _ in source.iter_tensors(obj)] == ["state_dict.w"]
  assert source.plain(obj["hyper_parameters"]) == {"model": {"text": {"last_n_layers": 4}},
                                                    "l": [1, {"a": 2}]}


def test_a_gloria_file_given_as_mgca_names_the_expected_keys(result):
  with pytest.raises(SourceError, match=r"not a MGCA checkpoint.*prototype_layer"):
    importer.convert("mgca", result["source"])


def test_a_lightning_file_of_another_project_is_refused_and_nothing_is_written(tmp_path):
  from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
  path = tmp_path / "other.ckpt"
  torch.save({"state_dict": {"encoder.layer1.weight": torch.ones(3, 3)}, "epoch": 3,
              "pytorch-lightning_version": "1.1.4",
              "hyper_parameters": OmegaConf.create({"model": {"name": "unet"}})}, str(path))
  out = tmp_path / "runs" / "x"
  with pytest.raises(SourceError, match=r"other.ckpt is not a GLoRIA checkpoint.*global_embedder"):
    released_import.import_checkpoint("gloria", path, out, gloria_config.get_config(),
                               tokenizer=str(path))
  assert not out.exists()
