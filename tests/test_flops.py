"""benchmarks/flops.py counts FLOPs (2 per multiply-accumulate) that match hand counts and the
published sizes of ResNet-50, ViT-B/16 and BERT-base."""
import pytest

from benchmarks import flops
from experiments.configs import convirt
from experiments.configs import lovt


def test_one_dense_layer_is_two_flops_per_multiply_accumulate():
  assert flops.dense(tokens=3, d_in=4, d_out=5) == 2 * 3 * 4 * 5


def test_one_convolution_counts_every_output_position_and_tap():
  # 3x3 conv, 2 -> 4 channels, 5x5 output: 5*5*4 outputs x (3*3*2) taps x 2.
  assert flops.conv(5, 5, 2, 4, 3) == 5 * 5 * 4 * 9 * 2 * 2


def test_one_attention_layer_is_four_projections_plus_scores_and_weighted_sum():
  t, d = 7, 8
  projections = 4 * 2 * t * d * d
  scores, weighted_sum = 2 * t * t * d, 2 * t * t * d
  assert flops.self_attention(t, d) == projections + scores + weighted_sum


def test_tiny_resnet_matches_a_hand_count():
  # One basic stage, width 2, stem 2, 1 channel, 8 px: stem 7x7/2 -> 4x4, pool -> 2x2,
  # two 3x3 convs 2->2 at 2x2 and no projection (shape unchanged).
  f, side = flops.resnet_forward((1,), (2,), bottleneck=False, stem_width=2, image_size=8)
  stem = 2 * 4 * 4 * 1 * 2 * 49
  block = 2 * (2 * 2 * 2 * 2 * 2 * 9)  # two convs x (2 FLOPs x 2x2 out x 2 in x 2 out x 9)
  assert side == 2
  assert f == stem + block


def test_resnet50_matches_published_4_09_gmacs():
  f, side = flops.resnet_forward((3, 4, 6, 3), (64, 128, 256, 512), bottleneck=True,
                                 stem_width=64, image_size=224, in_channels=3, num_classes=1000)
  assert side == 7
  assert f / 2 == pytest.approx(4.09e9, rel=0.005)  # torchvision: 4.09 GMACs ("GFLOPS")


def test_vit_b16_matches_published_17_6_gmacs():
  f, n = flops.vit_forward(patch=16, dim=768, depth=12, mlp_dim=3072, image_size=224,
                           in_channels=3, num_classes=1000)
  assert n == 196
  assert f / 2 == pytest.approx(17.56e9, rel=0.005)  # torchvision / DeiT: 17.56 GMACs


def test_bert_base_at_128_tokens_is_about_11_2_gmacs():
  f = 12 * flops.bert_layer_forward(128, 768, 3072)
  assert f / 2 == pytest.approx(11.17e9, rel=0.005)


def _bert_base(c):
  c.model.text.weights = ""
  c.model.text.num_layers = 12
  c.model.text.hidden_size = 768
  c.model.text.intermediate_size = 3072
  c.data.max_tokens = 128
  return c


def test_step_is_three_forwards_and_frozen_layers_count_forward_only():
  c = _bert_base(convirt.get_config())
  c.optim.freeze.text_first_n_layers = 0
  c.optim.freeze.text_embeddings = False
  full = flops.step_flops(c, batch_size=4)
  assert full.image == pytest.approx(3 * 4 * full.image_forward_per_example)
  assert full.text == pytest.approx(3 * 4 * full.text_forward_per_example)
  c.optim.freeze.text_first_n_layers = 3
  part = flops.step_flops(c, batch_size=4)
  layer = full.text_forward_per_example / 12
  assert part.text == pytest.approx(4 * (3 * layer + 3 * 9 * layer))
  c.optim.freeze.image = True
  assert flops.step_flops(c, batch_size=4).image == pytest.approx(4 * full.image_forward_per_example)


def test_lovt_step_equals_the_torch_reference_count_for_the_same_sizes():
  c = _bert_base(lovt.get_config())
  c.optim.freeze.text_first_n_layers = 0
  c.optim.freeze.text_embeddings = False
  ours = flops.step_flops(c, batch_size=16).total
  ref = flops.reference_step_flops(method="lovt", batch=16, image_size=224, seq_len=128,
                                   sentences=int(c.data.max_sentences))
  assert ours == pytest.approx(ref, rel=1e-9)


def test_peak_table_knows_h100_and_not_cpu():
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("cpu") is None
