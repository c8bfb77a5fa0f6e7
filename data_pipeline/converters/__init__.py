"""Input layouts -> StudyRecord items: MIMIC-CXR tree, generic CSV/JSONL manifests."""
