"""GLoRIA's Lightning checkpoint imported into mmrl's gloria method equals the authors' forward."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from experiments.configs import gloria as gloria_config  # noqa: E402
from mmrl.models.released import parity  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  # ResNet-50 (the format's), 64 px inputs upsampled to 299 inside the encoder as GLoRIA does;
  # a 4-layer 64-wide BERT.
  return parity.run_parity("gloria", tmp_path_factory.mktemp("gloria"),
                           gloria_config.get_config(), image_size=64, text_length=24)


def test_gloria_global_and_local_embeddings_equal_the_reference(result):
  for name, diff in result["max_abs_diff"].items():
    assert diff < TOL, (name, diff, result["scale"][name])


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
