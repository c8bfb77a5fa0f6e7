"""Generates docs/config_reference.md from the config files themselves, so it cannot drift.

COMMAND: python -m experiments.config_reference --output=docs/config_reference.md
CHECK:   tests/test_config_reference.py fails when the committed file differs from the output.

What it reads:
- mmrl/config/schema.py: every key's default and type come from *evaluating*
  `base_config()`; the descriptions are the source comments, found with `ast` + `tokenize`: the
  comment at the end of a `c.<key> = ...` line, the comment lines right above it, a comment on
  the line of a `dict(key=...)` keyword inside a group's constructor, and `# ---- name ----`
  section headers.
- every other experiments/configs/*.py: the first docstring line, its variant arguments
  (`arg == "..."` in get_config) and the keys whose values differ from base.py's (or that the
  config adds), again by evaluating `get_config()`.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import json
import pathlib
import re
import sys
import tokenize
from typing import Any, Iterator, Optional

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "experiments" / "configs"
BASE = REPO / "mmrl" / "config" / "schema.py"
COMMAND = "python -m experiments.config_reference --output=docs/config_reference.md"
_SECTION = re.compile(r"^#\s*-{2,}\s*(.+?)\s*-{2,}\s*$")


@dataclasses.dataclass
class KeyDoc:
  """What the base.py source says about one key (dotted path)."""
  key: str
  description: str = ""
  section: str = ""
  line: int = 0


# ---------------------------------------------------------------------------------------------
# Reading base.py's source.

def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """line -> (comment text without '#', whether the comment is the line's only token)."""
  out = {}
  code_lines = set()
  tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
  for tok in tokens:
    if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                        tokenize.DEDENT, tokenize.ENDMARKER):
      code_lines.update(range(tok.start[0], tok.end[0] + 1))
  for tok in tokens:
    if tok.type == tokenize.COMMENT:
      line = tok.start[0]
      out[line] = (tok.string.lstrip("#").strip(), line not in code_lines)
  return out


def _dotted(node: ast.AST, root: str) -> Optional[str]:
  """'data.image_size' for the target `c.data.image_size` (root 'c'); None otherwise."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == root and parts:
    return ".".join(reversed(parts))
  return None


def _group_keywords(value: ast.AST) -> list[ast.keyword]:
  """The keywords of `ConfigDict(dict(k=v, ...))` / `ConfigDict(k=v)` / `dict(k=v)`."""
  if not isinstance(value, ast.Call):
    return []
  if value.keywords:
    return list(value.keywords)
  if value.args and isinstance(value.args[0], ast.Call):
    return _group_keywords(value.args[0])
  return []


def parse_base_source(path: pathlib.Path = BASE, function: str = "base_config"
                      ) -> dict[str, KeyDoc]:
  """Key -> KeyDoc for every `c.<key> = ...` assignment in `function` of `path`."""
  source = path.read_text(encoding="utf-8")
  comments = _comments(source)
  tree = ast.parse(source)
  fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
  if fn is None:
    raise ValueError(f"{path} has no function {function}(); the config reference reads the "
                     "schema from it")
  root = fn.body[-1].value.id if (isinstance(fn.body[-1], ast.Return)
                                  and isinstance(fn.body[-1].value, ast.Name)) else "c"
  docs: dict[str, KeyDoc] = {}
  section = ""
  previous_end = fn.body[0].lineno - 1
  for stmt in fn.body:
    # Standalone comment lines between the previous statement and this one.
    above = []
    for line in range(previous_end + 1, stmt.lineno):
      text, alone = comments.get(line, ("", False))
      if not alone:
        above = [] if not text else above  # a blank line ends a comment block
        continue
      m = _SECTION.match("# " + text)
      if m:
        section, above = m.group(1), []
      else:
        above.append(text)
    previous_end = stmt.end_lineno
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
      continue
    key = _dotted(stmt.targets[0], root)
    if key is None:
      continue
    inline = comments.get(stmt.lineno, ("", True))
    parts = above + ([inline[0]] if inline[0] and not inline[1] else [])
    docs[key] = KeyDoc(key, " ".join(p for p in parts if p), section, stmt.lineno)
    keywords = _group_keywords(stmt.value)
    for kw in keywords:
      if kw.arg is None:
        continue
      same_line = [k for k in keywords if k.value.lineno == kw.value.lineno]
      text, alone = comments.get(kw.value.end_lineno, ("", True))
      if len(same_line) == 1 and text and not alone and kw.value.end_lineno != stmt.lineno:
        docs[f"{key}.{kw.arg}"] = KeyDoc(f"{key}.{kw.arg}", text, section, kw.value.lineno)
  return docs


# ---------------------------------------------------------------------------------------------
# Evaluated configs.

def flatten(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value) for every leaf; groups (ConfigDicts) are walked, lists are leaves."""
  for k in sorted(config.keys()) if prefix == "" else config.keys():
    v = config[k]
    key = f"{prefix}{k}"
    if isinstance(v, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
      yield from flatten(v, key + ".")
    else:
      yield key, v


def _ordered_leaves(config: Any) -> list[tuple[str, Any]]:
  """Leaves in the config's insertion order (base.py's order of assignment)."""
  out = []

  def walk(node, prefix):
    for k in node.keys():
      v = node[k]
      if isinstance(v, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        out.append((prefix + k, v))
        walk(v, prefix + k + ".")
      else:
        out.append((prefix + k, v))
  walk(config, "")
  return out


def _plain(value: Any) -> Any:
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return {k: _plain(value[k]) for k in value.keys()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def render_value(value: Any) -> str:
  """A short Python-like literal for a table cell."""
  if isinstance(value, str):
    return repr(value)
  if isinstance(value, tuple):
    return "(" + ", ".join(render_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  if isinstance(value, list):
    return "[" + ", ".join(_render_item(v) for v in value) + "]"
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return _render_item(value)
  return repr(value)


def _render_item(value: Any) -> str:
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, dict)):
    plain = _plain(value)
    first = [k for k in ("name", "weight") if k in plain]
    keys = first + [k for k in plain if k not in first]
    return "dict(" + ", ".join(f"{k}={render_value(plain[k])}" for k in keys) + ")"
  return render_value(value)


def type_name(value: Any) -> str:
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return "group"
  if isinstance(value, tuple):
    inner = sorted({type(v).__name__ for v in value})
    return f"tuple[{' | '.join(inner)}, ...]" if inner else "tuple"
  if isinstance(value, list):
    inner = sorted({"dict" if hasattr(v, "keys") else type(v).__name__ for v in value})
    return f"list[{' | '.join(inner)}]" if inner else "list"
  return "None" if value is None else type(value).__name__


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
  return f"`{text}`" if "`" not in text else f"``{text}``"


# ---------------------------------------------------------------------------------------------
# The document.

def _base_config() -> ml_collections.ConfigDict:
  from mmrl.config import schema  # pylint: disable=import-outside-toplevel
  return schema.base_config()


def _method_configs() -> list[pathlib.Path]:
  # from_run.py reads a run directory's config.json (it has no defaults of its own).
  return sorted(p for p in CONFIG_DIR.glob("*.py")
                if p.name not in ("__init__.py", "base.py", "from_run.py"))


def _variants(path: pathlib.Path) -> list[str]:
  """The string arguments get_config compares `arg` with (e.g. 'smoke', 'tiny', 'quick')."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  found = []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "arg"
        and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.In))):
      comp = node.comparators[0]
      values = comp.elts if isinstance(comp, (ast.Tuple, ast.List, ast.Set)) else [comp]
      found += [v.value for v in values if isinstance(v, ast.Constant)
                and isinstance(v.value, str) and v.value]
  return list(dict.fromkeys(found))


def _first_doc_line(path: pathlib.Path) -> str:
  doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
  return doc.strip().splitlines()[0] if doc.strip() else ""


def _comparable(value: Any) -> str:
  return json.dumps(_plain(value), sort_keys=True, default=str)


def _source_order(leaves: list[tuple[str, Any]], docs: dict[str, KeyDoc]
                  ) -> list[tuple[str, Any]]:
  """`leaves` sorted by where base.py assigns them (a key set inside a group's constructor
  follows its group; keys the source never names keep their relative order at the end)."""
  def line(key: str) -> tuple[float, ...]:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
      doc = docs.get(".".join(parts[:n]))
      if doc is not None:
        return (doc.line, n)
    return (float("inf"), 0)
  index = {k: i for i, (k, _) in enumerate(leaves)}
  return sorted(leaves, key=lambda kv: (line(kv[0]), index[kv[0]]))


def base_section(base: ml_collections.ConfigDict, docs: dict[str, KeyDoc]) -> list[str]:
  lines = []
  leaves = _source_order(_ordered_leaves(base), docs)
  by_top: dict[str, list[tuple[str, Any]]] = {}
  for key, value in leaves:
    by_top.setdefault(key.split(".")[0], []).append((key, value))
  for top, entries in by_top.items():
    section = next((docs[k].section for k, _ in entries if k in docs and docs[k].section), "")
    title = f"`{top}`" + (f" — {section}" if section else "")
    lines += [f"### {title}", ""]
    lines += ["| key | default | type | description |", "|---|---|---|---|"]
    for key, value in entries:
      doc = docs.get(key)
      desc = doc.description if doc else ""
      group = type_name(value) == "group"
      default = "" if group else _code(render_value(value))
      name = f"**{_code(key)}**" if group else _code(key)
      lines.append(f"| {name} | {_cell(default)} | {_cell(type_name(value))} | {_cell(desc)} |")
    lines.append("")
  return lines


def undocumented_keys(base: ml_collections.ConfigDict | None = None,
                      docs: dict[str, KeyDoc] | None = None) -> list[str]:
  """Leaf keys of base_config() with no comment in base.py (printed by main as a reminder)."""
  base = _base_config() if base is None else base
  docs = parse_base_source() if docs is None else docs
  return [k for k, v in _ordered_leaves(base)
          if type_name(v) != "group" and not (k in docs and docs[k].description)]


def method_section(path: pathlib.Path, base: ml_collections.ConfigDict) -> list[str]:
  module = importlib.import_module(f"experiments.configs.{path.stem}")
  config = module.get_config("")
  base_flat = dict(flatten(base))
  flat = dict(flatten(config))
  rel = path.relative_to(REPO).as_posix()
  lines = [f"### `{rel}`", "", _first_doc_line(path), ""]
  variants = _variants(path)
  if variants:
    lines += ["Variants: " + ", ".join(f"`{rel}:{v}`" for v in variants) + "", ""]
  rows = []
  for key, value in flat.items():
    if key not in base_flat:
      rows.append((key, "(not in base)", value))
    elif _comparable(value) != _comparable(base_flat[key]):
      rows.append((key, render_value(base_flat[key]), value))
  removed = [k for k in base_flat if k not in flat]
  if rows:
    lines += ["| key | base.py | this config |", "|---|---|---|"]
    for key, before, value in rows:
      before_cell = before if before == "(not in base)" else _code(before)
      lines.append(f"| {_code(key)} | {_cell(before_cell)} | {_cell(_code(render_value(value)))} |")
  else:
    lines.append("Same values as base.py.")
  if removed:
    lines += ["", "Keys of base.py this config removes: " + ", ".join(_code(k) for k in removed)]
  lines.append("")
  return lines


def generate() -> str:
  """The whole of docs/config_reference.md."""
  base = _base_config()
  docs = parse_base_source()
  lines = [
      "# Config reference",
      "",
      "<!-- Generated by `" + COMMAND + "` from experiments/configs/*.py;",
      "     do not edit by hand (tests/test_config_reference.py checks it). -->",
      "",
      "Every key the library reads has its default in `mmrl/config/schema.py`; a method",
      "config starts from it and changes some keys. Override any key on the command line with",
      "`--config.<key>=<value>` (e.g. `--config.train.batch_size=256`), and pick a variant with",
      "`--config=experiments/configs/<name>.py:<variant>`. Defaults, types and descriptions below",
      "come from evaluating the configs and from the comments in base.py.",
      "",
      "## Keys and defaults (`mmrl/config/schema.py`)",
      "",
  ]
  lines += base_section(base, docs)
  lines += ["## Method configs: what each changes from base.py", ""]
  for path in _method_configs():
    lines += method_section(path, base)
  return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="",
                      help="file to write (default: print to stdout), e.g. docs/config_reference.md")
  args = parser.parse_args(argv)
  text = generate()
  if args.output:
    pathlib.Path(args.output).write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    missing = undocumented_keys()
    if missing:
      print(f"{len(missing)} keys have no comment in {BASE.relative_to(REPO)} (their description "
            "cell is empty); add a trailing '# ...' comment to document them: "
            + ", ".join(missing), file=sys.stderr)
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
