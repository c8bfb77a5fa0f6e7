"""BioViL's release folder (CXR-BERT HF layout + the image model's .pt) imported into mmrl's
biovil method equals the hi-ml forward."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from experiments.configs import biovil as biovil_config  # noqa: E402
from benchmarks.released_references import parity  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  return parity.run_parity("biovil", tmp_path_factory.mktemp("biovil"),
                           biovil_config.get_config(), image_size=64, text_length=24)


def test_biovil_global_and_local_embeddings_equal_the_reference(result):
  for name, diff in result["max_abs_diff"].items():
    scale = result["scale"][name]
    assert diff < TOL and diff < TOL * scale, (name, diff, scale)  # absolute and relative


def test_biovil_import_drops_only_the_classifier_mlm_head_and_counters(result):
  report = result["report"]
  assert report["counts"]["tensors"] == report["counts"]["imported"] + report["counts"]["dropped"]
  for name, entry in report["dropped"].items():
    assert (".fc." in name or "cls.predictions" in name or "num_batches_tracked" in name
            or "position_ids" in name), (name, entry)
  assert any(".fc." in n for n in report["dropped"])


def test_biovil_config_feeds_unnormalised_pixels_and_uses_the_folders_vocabulary(result):
  c = result["config"]
  assert (c.data.mean, c.data.std) == (0.0, 1.0)
  assert c.data.tokenizer.endswith("biovil")
  assert c.method.name == "biovil"
