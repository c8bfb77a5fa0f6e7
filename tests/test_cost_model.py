"""Cost measurement from XLA (mmrl.train.cost_analysis, scaling_fit, benchmarks/cost_model.py)
and the cost levers of issue 17: GLoRIA's local negatives subset and the remat policies."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmrl.objectives import gloria
from mmrl.train import cost_analysis
from mmrl.train import scaling_fit


def _matmul_map(w, xs):
  return jax.lax.map(lambda x: jnp.tanh(x @ w), xs).sum()


def test_loop_correction_restores_a_lax_map_whose_body_xla_counts_once():
  steps, m, d = 16, 32, 64
  w = jax.ShapeDtypeStruct((d, d), jnp.float32)
  xs = jax.ShapeDtypeStruct((steps, m, d), jnp.float32)
  compiled = jax.jit(_matmul_map).lower(w, xs).compile()
  true_products = steps * 2 * m * d * d
  xla = cost_analysis.xla_cost(compiled)["flops"]
  assert xla < true_products / 4  # the trap: the body is counted once
  corr = cost_analysis.loop_correction(compiled.as_text())
  assert corr.product_flops == true_products
  assert corr.product_flops_trips_as_one == true_products / steps
  assert corr.unknown_trip_loops == 0
  corrected, _ = cost_analysis.loop_corrected_flops(compiled)
  assert true_products <= corrected <= 1.1 * true_products


def test_loop_correction_multiplies_nested_loops_and_counts_the_backward():
  outer, inner, m, d = 3, 5, 8, 16

  def f(w, xs):
    def body(x):
      return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=inner)[0]
    return jax.lax.map(body, xs).sum()

  w = jax.ShapeDtypeStruct((d, d), jnp.float32)
  xs = jax.ShapeDtypeStruct((outer, m, d), jnp.float32)
  fwd = cost_analysis.loop_correction(jax.jit(f).lower(w, xs).compile().as_text())
  assert fwd.product_flops == outer * inner * 2 * m * d * d
  # d/dw: the forward again (saved or recomputed) plus the input and weight gradients.
  grad = cost_analysis.loop_correction(jax.jit(jax.grad(f)).lower(w, xs).compile().as_text())
  assert grad.product_flops >= 3 * fwd.product_flops


def test_loop_free_product_count_matches_xla_for_dots_and_valid_convolutions():
  def f(x, k, a, b):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.sum() + jnp.einsum("bij,bjk->bik", a, b).sum()
  args = (jax.ShapeDtypeStruct((2, 9, 9, 3), jnp.float32),
          jax.ShapeDtypeStruct((3, 3, 3, 16), jnp.float32),
          jax.ShapeDtypeStruct((4, 8, 16), jnp.float32),
          jax.ShapeDtypeStruct((4, 16, 32), jnp.float32))
  compiled = jax.jit(f).lower(*args).compile()
  expected = 2 * (2 * 7 * 7 * 16) * (3 * 3 * 3) + 2 * 4 * 8 * 32 * 16
  corr = cost_analysis.loop_correction(compiled.as_text())
  assert corr.product_flops == expected
  assert corr.missing_flops == 0


def test_fit_recovers_a_quadratic_and_reports_zero_residuals_on_exact_points():
  xs = [64, 256, 512, 1024]
  ys = [3.0 + 2.0 * x + 0.01 * x * x for x in xs]
  f = scaling_fit.fit(xs, ys, degree=2)
  np.testing.assert_allclose(f["coef"], [3.0, 2.0, 0.01], rtol=1e-6, atol=1e-6)
  assert max(abs(r) for r in f["residuals"]) < 1e-9
  lin = scaling_fit.fit(xs[:1], ys[:1], degree=1, through_origin=True)
  assert lin["degree"] == 1 and lin["coef"][0] == 0.0
  assert scaling_fit.solve_max_x({"coef": [10.0, 2.0, 0.0]}, 30.0) == pytest.approx(10.0)
  assert scaling_fit.solve_max_x({"coef": [10.0, 0.0, 1.0]}, 26.0) == pytest.approx(4.0)
  assert scaling_fit.solve_max_x({"coef": [40.0, 1.0]}, 30.0) is None


# ---------------------------------------------------------------------------------------------
# GLoRIA: local negatives from a subset of the batch
# ---------------------------------------------------------------------------------------------


def _gloria_inputs(b=6, w=5, r=4, d=8, seed=0):
  rng = np.random.default_rng(seed)
  words = jnp.asarray(rng.standard_normal((b, w, d)), jnp.float32)
  regions = jnp.asarray(rng.standard_normal((b, r, d)), jnp.float32)
  wmask = jnp.asarray(np.arange(w)[None, :] < rng.integers(1, w + 1, size=b)[:, None])
  rmask = jnp.ones((b, r), bool)
  return words, wmask, regions, rmask


def _local(words, wmask, regions, rmask, valid, **kw):
  outputs = {"text_words": words, "word_mask": wmask, "image_regions": regions,
             "region_mask": rmask}
  return gloria.gloria_local(outputs, {"valid": valid}, **kw)


def test_grouped_negatives_equal_the_exact_loss_within_each_block_in_values_and_gradients():
  words, wmask, regions, rmask = _gloria_inputs(b=8)
  valid = jnp.ones((8,), bool).at[2].set(False)  # a padding example drops out of its block
  group = 4

  def grouped(w, r):
    return _local(w, wmask, r, rmask, valid, negatives_group=group, caption_chunk=3)[0]

  def reference(w, r):  # the exact loss of each block on its own, weighted by its valid rows
    total, count = 0.0, 0.0
    for i in range(0, 8, group):
      sl = slice(i, i + group)
      n = jnp.sum(valid[sl])
      total += n * _local(w[sl], wmask[sl], r[sl], rmask[sl], valid[sl])[0]
      count += n
    return total / count

  v_g, g_g = jax.jit(jax.value_and_grad(grouped, argnums=(0, 1)))(words, regions)
  v_r, g_r = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(words, regions)
  np.testing.assert_allclose(v_g, v_r, rtol=1e-5)
  for a, e in zip(g_g, g_r):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)
  # A group of the whole batch is the exact form; fewer candidates give a smaller loss.
  exact = _local(words, wmask, regions, rmask, valid)[0]
  np.testing.assert_allclose(_local(words, wmask, regions, rmask, valid, negatives_group=8)[0],
                             exact, rtol=1e-6)
  assert float(v_g) < float(exact)


def test_a_negatives_group_that_does_not_divide_the_batch_is_a_config_error():
  from mmrl.config_errors import ConfigError
  words, wmask, regions, rmask = _gloria_inputs()
  with pytest.raises(ConfigError, match="negatives_group=4"):
    _local(words, wmask, regions, rmask, jnp.ones((6,), bool), negatives_group=4)


# ---------------------------------------------------------------------------------------------
# Remat policies
# ---------------------------------------------------------------------------------------------


def test_remat_policies_keep_values_and_gradients_of_the_image_tower():
  from mmrl.models import towers
  import ml_collections
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 1)), jnp.float32)
  variables = None
  results = []
  for remat, policy in [(False, "nothing"), (True, "dots")]:
    cfg = ml_collections.ConfigDict(dict(dtype="float32", image=dict(
        name="resnet_tiny", norm="group", remat=remat, remat_policy=policy)))
    model = towers.build_image_tower(cfg)
    if variables is None:  # remat changes no parameter path: one init serves every policy
      variables = model.init(jax.random.key(0), x, train=False)

    def loss(params, model=model):
      out = model.apply({**variables, "params": params}, x, train=False)
      return jnp.sum(out.global_embedding ** 2) + jnp.sum(out.local ** 2)
    results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
  for value, grads in results[1:]:
    np.testing.assert_allclose(value, results[0][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads,
                 results[0][1])


def test_an_unknown_remat_policy_is_a_config_error_naming_the_key():
  from mmrl.config_errors import ConfigError
  from mmrl.models import remat
  with pytest.raises(ConfigError, match="model.text.remat_policy='everything'"):
    remat.maybe_remat(object, False, "everything", "model.text.remat_policy")


# ---------------------------------------------------------------------------------------------
# benchmarks/cost_model.py on a tiny config
# ---------------------------------------------------------------------------------------------


def test_cost_model_on_tiny_configs_writes_points_and_tables_that_agree_with_flops_py(tmp_path):
  from benchmarks import cost_model
  points = "gloria:16:1:full,convirt:16:2:full"
  assert cost_model.main(["--tiny", f"--points={points}", f"--out_dir={tmp_path}"]) == 0
  rows = [json.loads(l) for l in (tmp_path / "points.jsonl").read_text().splitlines()]
  assert len(rows) == 2 and not any("error" in r for r in rows)
  for r in rows:
    for key in ("flops_per_step", "flops_per_sample", "bytes_accessed_per_device", "peak_bytes",
                "argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "compile_s",
                "loop_missing_flops_per_device", "num_devices"):
      assert key in r, key
    assert r["num_devices"] == 8
    assert r["flops_per_step"] == pytest.approx(8 * r["flops_per_device"])
  gloria_row = next(r for r in rows if r["method"] == "gloria")
  convirt_row = next(r for r in rows if r["method"] == "convirt")
  assert gloria_row["loop_missing_flops_per_device"] > 0  # caption chunks of 8 over 16 captions
  assert gloria_row["unknown_trip_loops"] == 0
  # Matrix products and convolutions read from the compiled step agree with benchmarks/flops.py
  # within 5 % (flops.py counts 'SAME' convolution borders as XLA skips them, and no
  # elementwise work); XLA's total adds elementwise work, a large share at tiny widths.
  report = json.loads((tmp_path / "report.json").read_text())
  row = next(r for r in report["rows"] if r["method"] == "convirt")
  products = row["product_flops_per_device"] * row["num_devices"]
  assert products == pytest.approx(row["analytic_flops_per_step"], rel=0.05)
  assert convirt_row["flops_per_step"] > products
  assert "gloria|1|full" in report["curves"] and "convirt|2|full" in report["curves"]
  table = (tmp_path / "tables.md").read_text()
  assert "GFLOP / sample" in table and "local > 25 % from B" in table
  assert "XLA against benchmarks/flops.py" in table
