"""Object-CXR (MIDL 2020 foreign-object challenge, JF Healthcare) -> base.Dataset.

Owns reading the official release (github.com/jfhealthcare/object-CXR):
```
<root>/train.csv, <root>/dev.csv     image_name,annotation       (<root>/input/ is also accepted,
<root>/train/00001.jpg ...           the folder LoVT reads)
<root>/dev/08001.jpg ...
<root>/test.csv + <root>/test/       optional: the test set's labels, released after the challenge
                                     (its column is image_path, 'test/09001.jpg', not image_name)
```
`annotation` is '' for an image without foreign objects, else shapes separated by ';', each
`type x y ...` in image pixels: 0 = rectangle `x1 y1 x2 y2`, 1 = ellipse given by its bounding box
`x1 y1 x2 y2`, 2 = polygon `x1 y1 x2 y2 x3 y3 ...`. Every shape becomes its axis-aligned bounding
box (as LoVT's `sample_to_bboxes` and the challenge's FROC do), label 'Foreign object';
labels/values ('Foreign object',) is 1 when there is a shape; one 'Foreign object' mask per record
(all zero for negatives): rectangles and ellipses filled as their box, polygons filled, boundary
pixels included (data_pipeline.mask_shapes; BenchX's OpenCV drawing, which LoVT's masks match up to
the last row/column). A shape that does not parse is a `bad_annotation` error for its image.
No reports.

Splits (`split_source`): `official` (default) = `benchx`: train.csv -> train, dev.csv ->
validate, test.csv -> test (BenchX's lists are exactly these files: 00001-08000, 08001-09000,
09001-10000). `lovt`: 1600 of train.csv as validate (data_pipeline/split_lists/object_cxr_lovt.txt),
dev.csv -> test; test.csv images are left out (LoVT does not use them).
"""
from __future__ import annotations

import pathlib

from data_pipeline import mask_shapes
from data_pipeline import splits as split_lists
from data_pipeline.converters.base import Dataset, Item, SourceBox, error_entry
from data_pipeline.converters import download_files

LABEL = "Foreign object"
SOURCES = ("official", "benchx", "lovt")
_FILES = (("train", "train"), ("dev", "validate"), ("test", "test"))


def parse_annotation(text: str
                     ) -> list[tuple[int, tuple[float, float, float, float], tuple[float, ...]]]:
  """'' -> []; 'type x y ...;...' -> [(type, (xmin, ymin, xmax, ymax), polygon)], the polygon
  being the box's 4 corners for a rectangle / ellipse. Raises ValueError."""
  shapes = []
  for part in (p.strip() for p in str(text or "").split(";")):
    if not part:
      continue
    values = part.split()
    try:
      kind = int(values[0])
      coords = [float(v) for v in values[1:]]
    except (ValueError, IndexError):
      raise ValueError(f"shape {part!r} is not 'type x y ...' numbers") from None
    if kind in (0, 1) and len(coords) != 4:
      raise ValueError(f"shape {part!r}: a {'rectangle' if kind == 0 else 'ellipse'} needs 4 "
                       f"coordinates, got {len(coords)}")
    if kind == 2 and (len(coords) < 6 or len(coords) % 2):
      raise ValueError(f"shape {part!r}: a polygon needs >= 3 x y pairs, got {len(coords)} "
                       "values")
    if kind not in (0, 1, 2):
      raise ValueError(f"shape {part!r}: type {kind} is not 0 (rectangle), 1 (ellipse) or 2 "
                       "(polygon)")
    xs, ys = coords[0::2], coords[1::2]
    box = (min(xs), min(ys), max(xs), max(ys))
    shapes.append((kind, box, tuple(coords) if kind == 2 else mask_shapes.rectangle(*box)))
  return shapes


def list_object_cxr(root: str | pathlib.Path, *, split_source: str = "",
                    split_seed: int = 0) -> Dataset:
  """Lists the Object-CXR release (module docstring). split_seed is unused (lists)."""
  del split_seed
  root = pathlib.Path(root)
  if not (root / "train.csv").is_file() and (root / "input" / "train.csv").is_file():
    root = root / "input"
  source = split_lists.check_source("object_cxr", split_source, SOURCES)
  problems: list[dict] = []
  parsed: dict[str, tuple[str, str, list]] = {}  # id -> (official split, image path, shapes)
  read_any = False
  for stem, split in _FILES:
    csv_path = root / f"{stem}.csv"
    if not csv_path.is_file():
      if stem != "test":  # test.csv is optional (released later)
        problems.append(error_entry(csv_path.name, "missing_file", f"{csv_path} does not exist: "
                                    f"the {stem} images are not converted", str(csv_path)))
      continue
    read_any = True
    rows = download_files.read_csv(csv_path, ("annotation",), what="Object-CXR annotation file")
    if rows and "image_name" not in rows[0] and "image_path" not in rows[0]:
      raise ValueError(f"Object-CXR annotation file {str(csv_path)!r} has neither an image_name "
                       "nor an image_path column")
    for row in rows:
      name = row.get("image_name") or pathlib.Path(row.get("image_path", "")).name
      image_id = pathlib.Path(name).stem
      try:
        shapes = parse_annotation(row.get("annotation", ""))
      except ValueError as e:
        problems.append(error_entry(image_id, "bad_annotation", f"{csv_path.name}:"
                                    f"{row['__line__']}: {e}", str(csv_path)))
        continue
      if image_id in parsed:
        problems.append(error_entry(image_id, "duplicate_id", f"{csv_path.name} lists "
                                    f"{name!r} again; kept the first", str(csv_path)))
        continue
      parsed[image_id] = (split, str(root / stem / name), shapes)
  if not read_any:
    raise FileNotFoundError(f"{root} has neither train.csv nor dev.csv: --input must be the "
                            "Object-CXR folder holding train.csv, dev.csv, train/ and dev/")
  if source == "lovt":
    default = {i: {"train": "train", "validate": "test"}[s]
               for i, (s, _, _) in parsed.items() if s != "test"}
    split_list = split_lists.read_split_list(split_lists.list_path("object_cxr", "lovt"))
    for i, s in split_list.assign.items():  # LoVT's test list is dev.csv: keep it there
      if i in default and default[i] == "train":
        default[i] = s
    assign = default
    split_info = split_lists.summary(source, assign, how="shipped list", split_list=split_list)
  else:
    assign = {i: s for i, (s, _, _) in parsed.items()}
    split_info = split_lists.summary(source, assign, how="the release's train/dev/test files",
                                     expected={"train": 8000, "validate": 1000, "test": 1000})
  items = []
  for image_id in sorted(assign):
    _, image, shapes = parsed[image_id]
    items.append(Item(
        item_id=image_id, image=image, source=str(pathlib.Path(image).relative_to(root)),
        split=assign[image_id], labels=(1.0 if shapes else 0.0,),
        boxes=tuple(SourceBox(LABEL, *box) for _, box, _ in shapes),
        shape_masks=((LABEL, tuple(polygon for _, _, polygon in shapes)),)))
  return Dataset(
      name="object_cxr", source=str(root), items=items, label_names=(LABEL,),
      listing_errors=problems, require_report=False,
      args={"layout": "object_cxr", "input": str(root), "split": split_info})
