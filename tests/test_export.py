"""Export: a tiny run's encoders -> safetensors + HF BertModel folder -> load_encoder, round trip.

One 2-step ConVIRT smoke run is trained and exported once for the module; the exported image
encoder must give the eval step's embeddings for the same pixels, and the exported text tower
must load in `transformers.BertModel` with the same hidden states.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

import mmrl
from data_pipeline import image_codec
from data_pipeline import pipeline as data_lib
from data_pipeline import records
from data_pipeline import tokenization
from experiments.configs import convirt
from mmrl import export
from mmrl.models import hf_export
from mmrl.models import hf_weights
from mmrl.models import towers
from mmrl.parallel import mesh as mesh_lib
from mmrl.train import checkpoint as ckpt_lib
from mmrl import loop
from mmrl.train import run_dir
from mmrl.train import state as state_lib
from mmrl.train import step as step_lib


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_cache):
  """(run config as trained, run dir, export dir) of a 2-step convirt smoke run."""
  root = tmp_path_factory.mktemp("export")
  c = convirt.get_config("smoke")
  c.data.synthetic.cache_dir = str(synthetic_cache)
  c.data.synthetic.workers = 1
  c.train.num_steps = 2
  c.optim.warmup_steps = 1
  c.train.checkpoint_every = 2
  c.train.log_every = 1
  c.eval.retrieval.enabled = False
  run = root / "run"
  loop.train_and_evaluate(c, run)
  out = root / "exported"
  export.export_run(run, out)
  return export.read_run_config(run), run, out


def _restored_state(config, run):
  mesh = mesh_lib.make_mesh(config.mesh)
  state, shardings = state_lib.create_train_state(config, jax.random.key(0), mesh)
  ckpt = ckpt_lib.Checkpointer(run / "checkpoints", async_save=False)
  state = ckpt.restore(state, with_data_iter=False).state
  ckpt.close()
  return state, shardings, mesh


def test_export_writes_the_documented_files(exported):
  _, _, out = exported
  for name in ("image_encoder.safetensors", "encoder_config.json", "preprocessing.json",
               "text_encoder/model.safetensors", "text_encoder/config.json",
               "text_encoder/tokenizer.json", "text_encoder/vocab.txt"):
    assert (out / name).is_file(), name
  cfg = json.loads((out / "encoder_config.json").read_text())
  assert cfg["image"]["projection"]["name"] == "image_projection"
  assert cfg["image"]["embedding_dim"] == 32 and cfg["source"]["step"] == 2
  pre = json.loads((out / "preprocessing.json").read_text())
  assert (pre["image"]["size"], pre["image"]["mean"], pre["image"]["std"]) == (32, 0.5, 0.25)
  assert pre["source_files"]["stored_short_side"] == 48 and pre["text"]["max_tokens"] == 64


def test_loaded_encoder_equals_the_in_training_eval_step(exported):
  config, run, out = exported
  state, shardings, mesh = _restored_state(config, run)
  eval_step = step_lib.make_eval_step(config, mesh, shardings)
  batch = next(data_lib.make_eval_batches(config.data, split=config.data.eval_split,
                                          batch_size=8, max_examples=8))
  to_global = lambda b: jax.device_put(b, mesh_lib.batch_sharding(mesh))
  expected = np.asarray(eval_step(state, to_global(batch))["image_embed"])
  n = int(batch["valid"].sum())
  # The same records' stored pixels, as a user would hold them: uint8 arrays of their own size.
  source = data_lib.split_source(config.data.dataset_dir, config.data.eval_split)
  images = [image_codec.decode_png(records.parse_record(source[i]).image_png) for i in range(n)]
  assert images[0].dtype == np.uint8 and images[0].shape != (32, 32)
  encoder = mmrl.load_encoder(out)
  got = encoder(images)
  assert got.shape == (n, 32)
  np.testing.assert_allclose(got, expected[:n], atol=2e-5)
  feats = encoder.features(images[:2])
  assert feats["local"].shape[0] == 2 and feats["local"].ndim == 4
  assert feats["global"].shape == (2, 32)


def test_preprocessing_takes_any_layout_and_size_the_same_way():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (40, 30), dtype=np.uint8)
  kw = dict(size=16, mean=0.5, std=0.25)
  one = export.preprocess_images(img, **kw)
  assert one.shape == (1, 16, 16, 1)
  np.testing.assert_array_equal(export.preprocess_images(img[None], **kw), one)
  np.testing.assert_array_equal(export.preprocess_images(img[None, ..., None], **kw), one)
  # 8-bit images are resized in 8 bits (as the pipeline does with its 8-bit PNGs); float and
  # 16-bit ones in float: they agree to within one grey level.
  one_level = 1.0 / 255 / 0.25 + 1e-6
  np.testing.assert_allclose(export.preprocess_images(img.astype(np.float32) / 255, **kw), one,
                             atol=one_level)
  np.testing.assert_allclose(export.preprocess_images((img.astype(np.uint16) * 257), **kw), one,
                             atol=one_level)
  mixed = export.preprocess_images([img, rng.integers(0, 256, (20, 50), dtype=np.uint8)], **kw)
  assert mixed.shape == (2, 16, 16, 1)
  np.testing.assert_array_equal(mixed[:1], one)


def test_preprocessing_errors_say_what_input_is_expected():
  with pytest.raises(ValueError, match="must lie in \\[0, 1\\].*divide 8-bit pixels by 255"):
    export.preprocess_images(np.full((8, 8), 200.0, np.float32), size=8, mean=0.5, std=0.25)
  with pytest.raises(ValueError, match="give one image \\[H, W\\]"):
    export.preprocess_images(np.zeros((2, 8, 8, 3), np.uint8), size=8, mean=0.5, std=0.25)
  with pytest.raises(ValueError, match="dtype int64"):
    export.preprocess_images(np.zeros((8, 8), np.int64), size=8, mean=0.5, std=0.25)


def test_load_encoder_on_a_wrong_folder_names_the_export_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m experiments.export"):
    mmrl.load_encoder(tmp_path)


def test_hf_names_are_the_exact_inverse_of_the_import_map():
  model_cfg = convirt.get_config("smoke").model
  tower = towers.build_text_tower(model_cfg)
  ids = np.zeros((1, 64), np.int32)
  params = tower.init(jax.random.key(0), ids, np.ones_like(ids), ids, num_sentences=4,
                      train=False)["params"]
  state = hf_export.to_hf_state_dict(params)
  assert "encoder.layer.1.attention.self.query.weight" in state
  back = hf_weights.convert_state_dict(state)
  flat = hf_weights.flatten_params(params)
  assert set(back) == set(flat)
  for path, value in flat.items():
    np.testing.assert_array_equal(back[path], np.asarray(value))


def test_text_encoder_loads_in_transformers_with_the_towers_hidden_states(exported):
  torch = pytest.importorskip("torch", reason="torch not installed (pip install 'mmrl[torch]')")
  transformers = pytest.importorskip("transformers", reason="transformers not installed")
  config, run, out = exported
  _, raw = run_dir.read_weights(run)
  tok = tokenization.ReportTokenizer(str(out / "text_encoder"))
  text = tok.encode_batch([["The heart is enlarged.", "No effusion."], ["Lungs are clear."]],
                          64, 4)
  tower = towers.build_text_tower(config.model)
  ours = tower.apply({"params": raw["params"]["text_tower"]}, text["input_ids"],
                     text["attention_mask"], text["token_to_sentence"], num_sentences=4,
                     train=False)
  model = transformers.BertModel.from_pretrained(out / "text_encoder").eval()
  with torch.no_grad():
    hf = model(input_ids=torch.tensor(text["input_ids"], dtype=torch.long),
               attention_mask=torch.tensor(text["attention_mask"], dtype=torch.long))
  hidden = hf.last_hidden_state.numpy()
  real = text["attention_mask"].astype(bool)
  np.testing.assert_allclose(hidden[real], np.asarray(ours.tokens)[real], atol=1e-5)
  # global_pool 'max_tokens' (encoder_config.json) over the content tokens reproduces the global.
  mask = np.asarray(ours.token_mask)[..., None]
  pooled = np.where(mask, hidden, -np.inf).max(axis=1)
  np.testing.assert_allclose(pooled, np.asarray(ours.global_embedding), atol=1e-5)
  assert json.loads((out / "encoder_config.json").read_text())["text"]["global_pool"] == (
      "max_tokens")


@pytest.mark.parametrize("method, head", [("mgca", "image_projection"), ("lovt", None)])
def test_projection_is_exported_only_where_it_is_the_methods_image_embedding(method, head):
  import importlib  # pylint: disable=import-outside-toplevel
  from mmrl.objectives.two_tower import build_model  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"experiments.configs.{method}").get_config("tiny")
  model = build_model(config)
  init = jax.jit(lambda batch: model.init({"params": jax.random.key(0),
                                           "dropout": jax.random.key(1)}, batch, train=False))
  variables = init(state_lib.dummy_batch(config))
  state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  spec = export._projection_spec("image_projection", state["params"], state["batch_stats"])  # pylint: disable=protected-access
  note = export._check_projection(config, state, spec)  # pylint: disable=protected-access
  if head is None:
    assert "is not image_projection(image tower global)" in note
  else:
    assert note is None, note
    assert (spec["output_norm"], spec["output_norm_affine"]) == ("batch", False)  # MGCA's head
