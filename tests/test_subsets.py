"""Nested, seeded training subsets (data_pipeline/subsets.py)."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipeline import subsets


def _strata(n_pos: int, n_neg: int) -> list[str]:
  return ["boxes/A"] * n_pos + ["none/-"] * n_neg


def test_smaller_fractions_are_subsets_of_larger_ones_for_every_seed():
  ids = [f"im{i}" for i in range(500)]
  doc = subsets.make_subsets(ids, _strata(100, 400), [1, 10, 100], [0, 1, 2])
  for seed in (0, 1, 2):
    one, ten, full = (set(subsets.subset_ids(doc, f, seed)) for f in (1, 10, 100))
    assert one < ten < full
    assert full == set(ids)


def test_the_same_seed_draws_the_same_subsets_and_another_seed_others():
  ids = [f"im{i}" for i in range(300)]
  a = subsets.make_subsets(ids, _strata(60, 240), [10], [0, 1])
  b = subsets.make_subsets(ids, _strata(60, 240), [10], [0, 1])
  assert subsets.subset_ids(a, 10, 0) == subsets.subset_ids(b, 10, 0)
  assert subsets.subset_ids(a, 10, 0) != subsets.subset_ids(a, 10, 1)


def test_counts_are_the_ceiling_of_the_fraction_and_written_in_the_file():
  ids = [f"im{i}" for i in range(250)]
  doc = subsets.make_subsets(ids, _strata(50, 200), [1, 10, 100], [3])
  entry = doc["subsets"]["3"]
  assert [entry[k]["count"] for k in ("1", "10", "100")] == [3, 25, 250]
  assert all(entry[k]["seed"] == 3 and len(entry[k]["ids"]) == entry[k]["count"] for k in entry)


def test_each_prefix_holds_each_stratum_within_one_of_its_share():
  strata = _strata(30, 270)
  for seed in range(5):
    order = subsets.nested_order(strata, seed)
    for k in (3, 10, 30, 100, 299):
      pos = sum(strata[i] == "boxes/A" for i in order[:k])
      assert abs(pos - k * 30 / 300) <= 1, (seed, k, pos)


def test_a_tiny_split_gets_at_least_one_example_per_fraction():
  doc = subsets.make_subsets(["a", "b", "c"], ["none/-"] * 3, [1, 10, 100], [0])
  assert [doc["subsets"]["0"][k]["count"] for k in ("1", "10", "100")] == [1, 1, 3]
  assert subsets.subset_size(10, 70) == 7  # no float round-up to 8


def test_bad_fractions_and_repeated_ids_are_refused_with_the_value():
  with pytest.raises(ValueError, match="150"):
    subsets.subset_size(150, 10)
  with pytest.raises(ValueError, match="repeat"):
    subsets.make_subsets(["a", "a"], ["x", "x"], [10], [0])


def test_the_order_is_a_permutation():
  order = subsets.nested_order(["x", "y", "y", "z", "y"], 7)
  assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
  assert subsets.nested_order([], 0).shape == (0,)
  np.testing.assert_array_equal(order, subsets.nested_order(["x", "y", "y", "z", "y"], 7))
