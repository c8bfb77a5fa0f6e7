"""The import layers of setup.cfg's [importlinter] contracts hold, and mmrl builds no module names.

`lint-imports` (import-linter) checks the static imports, lazy ones inside functions included:
benchmarks -> experiments -> mmrl -> data_pipeline, the layers inside mmrl and data_pipeline, and
the independence of sibling evaluators. A module imported by a name computed at run time is
invisible to it, so the second test allows `importlib.import_module` inside mmrl and data_pipeline
only with a literal name or in the registries listed here.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Registries that import their members by name from a literal table: the objectives' built-in
# families (BUILTIN_MODULES), the converters of data_pipeline.converters.base.LAYOUTS, and the
# offline text-weight packages of hf_weights.PACKAGED_WEIGHTS (outside packages, not mmrl modules).
REGISTRY_IMPORTERS = {"mmrl/objectives/registry.py", "data_pipeline/convert.py",
                      "mmrl/models/hf_weights.py"}


def test_lint_imports_keeps_every_contract():
  exe = pathlib.Path(sys.executable).with_name("lint-imports")
  if not exe.exists():
    pytest.skip(f"{exe} not installed: pip install -e '.[test]' installs import-linter")
  done = subprocess.run([str(exe), "--config", str(REPO / "setup.cfg")], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
  assert "0 broken" in done.stdout, done.stdout[-2000:]


def _computed_imports(path: pathlib.Path) -> list[int]:
  """Line numbers of import_module / __import__ calls whose module name is not a literal."""
  lines = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if not isinstance(node, ast.Call) or not node.args:
      continue
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
    if name in ("import_module", "__import__") and not isinstance(node.args[0], ast.Constant):
      lines.append(node.lineno)
  return lines


def test_library_imports_modules_by_literal_name_or_through_a_registry():
  offenders = []
  for package in ("mmrl", "data_pipeline"):
    for path in sorted((REPO / package).rglob("*.py")):
      rel = path.relative_to(REPO).as_posix()
      if rel in REGISTRY_IMPORTERS:
        continue
      offenders += [f"{rel}:{n}" for n in _computed_imports(path)]
  assert not offenders, ("modules imported by a computed name (invisible to lint-imports; use a "
                         f"registry or a literal import): {offenders}")


def test_the_computed_import_check_sees_an_f_string(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text("import importlib\nm = 'x'\nimportlib.import_module(f'experiments.{m}')\n"
                   "importlib.import_module('mmrl.train')\n")
  assert _computed_imports(probe) == [3]
