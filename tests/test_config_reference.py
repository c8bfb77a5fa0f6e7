"""docs/config_reference.md is generated from the config files and must match them."""
import pathlib
import textwrap

from experiments import config_reference

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_committed_config_reference_matches_the_config_files():
  committed = (REPO / "docs" / "config_reference.md").read_text(encoding="utf-8")
  assert committed == config_reference.generate(), (
      "docs/config_reference.md is out of date with experiments/configs/*.py; regenerate it with "
      f"`{config_reference.COMMAND}` and commit the result")


def test_every_base_key_is_in_the_reference_with_its_default():
  text = config_reference.generate()
  for key, value in config_reference.flatten(config_reference._base_config()):  # pylint: disable=protected-access
    assert f"| `{key}` | `{config_reference.render_value(value)}` |" in text, key


def test_source_comments_become_descriptions(tmp_path):
  source = textwrap.dedent('''\
      import ml_collections

      def base_config():
        c = ml_collections.ConfigDict()
        # ---- training loop (somewhere) ----
        c.train = ml_collections.ConfigDict()
        # Two lines above a key
        # describe it.
        c.train.steps = 10  # and so does its end-of-line comment

        c.train.lr = 0.1
        c.train.ema = ml_collections.ConfigDict(dict(
            decay=0.99,  # EMA decay per step
            enabled=False))
        return c
      ''')
  path = tmp_path / "base.py"
  path.write_text(source)
  docs = config_reference.parse_base_source(path)
  assert docs["train.steps"].description == (
      "Two lines above a key describe it. and so does its end-of-line comment")
  assert docs["train.steps"].section == "training loop (somewhere)"
  assert docs["train.lr"].description == ""
  assert docs["train.ema.decay"].description == "EMA decay per step"
  assert "train.ema.enabled" not in docs


def test_method_sections_list_only_changed_or_added_keys():
  text = config_reference.generate()
  convirt = text.split("### `experiments/configs/convirt.py`")[1].split("### ")[0]
  assert "| `train.num_steps` | `1000` | `50000` |" in convirt
  assert "`data.image_size`" not in convirt  # 224 in both
  assert "`experiments/configs/convirt.py:smoke`" in convirt
