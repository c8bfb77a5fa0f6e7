"""Input layouts -> Datasets of Items: MIMIC-CXR tree, CheXpert, generic CSV/JSONL manifests and
the downstream sets. base.py holds what they share (Item, Dataset, error_entry) and LAYOUTS."""
