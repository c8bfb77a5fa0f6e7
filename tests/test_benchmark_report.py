"""benchmarks/report.py turns benchmark JSON rows into the RESULTS.md tables with ratios."""
import json

from benchmarks import report


def _rows():
  base = {"date": "2026-01-01 00:00 UTC", "device_kind": "NVIDIA H100 80GB HBM3",
          "image_size": 224}
  return [
      dict(base, bench="torch_reference", method="convirt", mode="compile", batch_size=256,
           samples_per_s=1000.0, step_ms=256.0, command="python torch_reference.py"),
      dict(base, bench="torch_reference", method="convirt", mode="eager", batch_size=256,
           samples_per_s=800.0, step_ms=320.0, command="python torch_reference.py"),
      dict(base, bench="mmrl_step", mode="synthetic", method="convirt", image_tower="resnet50",
           batch_size=256, samples_per_s=1600.0, step_ms=160.0, mfu=0.41, compile_s=30.0,
           command="python step.py"),
      dict(base, bench="mmrl_step", mode="synthetic", method="lovt", image_tower="resnet50",
           batch_size=512, samples_per_s=1000.0, step_ms=512.0, local_loss_share=0.3,
           command="python step.py"),
      dict(base, bench="mmrl_step", mode="global_only", method="lovt", image_tower="resnet50",
           batch_size=512, samples_per_s=1400.0, step_ms=358.4, command="python step.py"),
      dict(base, bench="mmrl_step", mode="input_pipeline", method="convirt",
           image_tower="resnet50", batch_size=256, skipped="skipped: no grain",
           command="python step.py"),
  ]


def test_ratio_to_the_compiled_reference_is_computed_and_judged_against_1_5x():
  text = report.render(_rows())
  assert "| convirt | 256 | compile | 1600.0 | 1000.0 | 1.60x | meets |" in text
  assert "| convirt | 256 | eager | 1600.0 | 800.0 | 2.00x |  |" in text


def test_local_share_and_skipped_pipeline_rows_are_reported():
  text = report.render(_rows())
  assert "| lovt | resnet50 | 512 | 512.0 | 358.4 | 30.0 % | misses |" in text
  assert "skipped: no grain" in text
  assert "NVIDIA H100 80GB HBM3" in text and "`python step.py`" in text


def test_read_rows_skips_non_json_lines(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text("log line\n" + json.dumps(_rows()[0]) + "\n\n{broken\n")
  assert report.read_rows([path]) == [_rows()[0]]
