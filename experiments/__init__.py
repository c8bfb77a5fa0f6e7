"""Thin absl entry points (pretrain, convert) and ml_collections configs."""
