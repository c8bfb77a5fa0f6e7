"""A BiomedCLIP-layout open_clip release (built and read back by open-clip-torch itself) imported
into mmrl's open_clip method equals open_clip's forward, and evaluates like any run."""
from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("open_clip", reason="open-clip-torch builds the reference (torch extra)")

from experiments.configs import from_run  # noqa: E402
from experiments.configs import open_clip as open_clip_config  # noqa: E402
from benchmarks.released_references import parity  # noqa: E402
from mmrl.models.released import importer  # noqa: E402
from mmrl.train import released_import  # noqa: E402
from mmrl.models.released.source import SourceError  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  return parity.run_parity("open_clip", tmp_path_factory.mktemp("open_clip"),
                           open_clip_config.get_config(), image_size=32, text_length=24)


@pytest.fixture(scope="module")
def folder(result):
  return pathlib.Path(result["source"])


def _copy_with(folder: pathlib.Path, tmp: pathlib.Path, **text_cfg) -> pathlib.Path:
  out = tmp / "release"
  shutil.copytree(folder, out)
  cfg = json.loads((out / "open_clip_config.json").read_text())
  cfg["model_cfg"]["text_cfg"].update(text_cfg)
  (out / "open_clip_config.json").write_text(json.dumps(cfg))
  return out


def test_open_clip_image_and_text_embeddings_equal_open_clips_forward(result):
  assert set(result["max_abs_diff"]) == {"image_global", "image_embed", "text_global",
                                         "text_embed", "text_tokens"}
  for name, diff in result["max_abs_diff"].items():
    scale = result["scale"][name]
    assert diff < TOL and diff < TOL * scale, (name, diff, scale)  # absolute and relative


def test_open_clip_import_takes_every_tensor_and_the_logit_scale_becomes_log_tau(result, folder):
  report = result["report"]
  assert report["counts"]["tensors"] == report["counts"]["imported"] > 0
  state = torch.load(str(folder / "open_clip_pytorch_model.bin"))
  converted = importer.convert("open_clip", folder)
  np.testing.assert_allclose(converted.params[("temperature", "log_tau")],
                             -float(state["logit_scale"]), rtol=0, atol=0)
  assert ("image_projection", "dense", "bias") not in converted.params
  assert ("text_projection", "dense_1", "bias") not in converted.params


def test_open_clip_config_feeds_unit_pixels_with_the_clip_normalisation_folded_in(result):
  c = result["config"]
  assert (c.data.mean, c.data.std) == (0.0, 1.0)
  assert c.method.name == "open_clip" and c.model.text.global_pool == "cls"
  assert c.model.image.name == "vit_tiny" and c.data.image_size == 32
  assert c.data.tokenizer.endswith("vocab.txt")
  assert result["report"]["config_overrides"]["data.max_tokens"] == 256  # context_length


def test_zero_shot_and_retrieval_run_on_the_import(folder, tmp_path, synthetic_cache):
  from mmrl.evaluation import runner  # pylint: disable=import-outside-toplevel
  run, _ = released_import.import_checkpoint("open_clip", folder, tmp_path / "run",
                                      open_clip_config.get_config())
  c = from_run.get_config(str(run))
  c.data.dataset_dir = ""
  c.data.synthetic.cache_dir = str(synthetic_cache)
  c.data.synthetic.workers = 1
  c.data.synthetic.num_patients = 24
  c.data.synthetic.image_size = 96
  c.data.synthetic.short_side = 48
  c.data.max_tokens = 64
  c.eval.batch_size = 8
  c.eval.max_examples = 16
  scalars, _, step = runner.evaluate_checkpoint(c, str(run), ["retrieval", "zero_shot"])
  assert step == 0
  assert 0.0 <= scalars["retrieval/i2t_R@1"] <= 1.0
  assert "zero_shot/mean_accuracy" in scalars, sorted(scalars)


def test_a_mean_pooled_text_tower_is_refused_naming_the_field(folder, tmp_path):
  bad = _copy_with(folder, tmp_path, hf_pooler_type="mean_pooler")
  with pytest.raises(SourceError, match="hf_pooler_type='mean_pooler'"):
    importer.convert("open_clip", bad)


def test_an_option_the_format_does_not_take_is_an_error_naming_it(folder):
  with pytest.raises(SourceError, match=r"--image_weights=.* not an option of --format=open_clip"):
    importer.convert("open_clip", folder, image_weights="x.pt")
  with pytest.raises(SourceError, match=r"--image_weights=.* not an option of --format=gloria"):
    importer.convert("gloria", folder / "missing.ckpt", image_weights="x.pt")
  with pytest.raises(SourceError, match=r"--text_num_heads=.* not an option of --format=biovil"):
    importer.convert("biovil", folder, text_num_heads=4)


def test_a_folder_of_another_format_names_the_expected_file(folder, tmp_path):
  with pytest.raises(SourceError, match="no open_clip_config.json"):
    importer.convert("open_clip", tmp_path)
  with pytest.raises(SourceError, match="not a folder"):
    importer.convert("open_clip", folder / "open_clip_pytorch_model.bin")


def test_gelu_mlp_projection_without_biases_equals_numpy():
  import jax  # pylint: disable=import-outside-toplevel
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  from mmrl.heads.projection import MLPProjection  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  head = MLPProjection(hidden=4, out=2, activation="gelu", use_bias=False)
  v = head.init(jax.random.key(0), x)
  assert set(v["params"]["dense_0"]) == {"kernel"} and set(v["params"]["dense_1"]) == {"kernel"}
  h = x @ np.asarray(v["params"]["dense_0"]["kernel"])
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  ref = h @ np.asarray(v["params"]["dense_1"]["kernel"])
  np.testing.assert_allclose(np.asarray(head.apply(v, x)), ref, rtol=1e-5, atol=1e-6)


def test_export_of_the_import_carries_the_bias_free_image_projection(folder, tmp_path):
  from mmrl import export  # pylint: disable=import-outside-toplevel
  run, _ = released_import.import_checkpoint("open_clip", folder, tmp_path / "run",
                                      open_clip_config.get_config())
  info = export.export_run(run, tmp_path / "export")
  assert info["image"]["projection"] == {"kind": "linear", "name": "image_projection",
                                         "out": 32, "use_bias": False}
  assert info["image"]["projection_note"] == ""  # tower + head equals the model's image_embed
