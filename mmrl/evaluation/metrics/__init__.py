"""Metric math: pure numpy functions of predictions and ground truth, no model, no state.

Owns classification (ROC AUC), detection (box IoU, AP, mAP, FROC), localisation (pointing game,
thresholded IoU, model-free baselines), grounding (CNR, mIoU), readouts (the scalars of one
localisation read-out), statistics (describe, paired t-test, verdict) and seed_comparison (two
runs' per-seed metrics compared). Imports nothing from mmrl/evaluation above it.
"""
