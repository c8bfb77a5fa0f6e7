"""Pictures: learning curves from a run's metrics.jsonl (run_curves), sentence heat maps
(heatmaps) and retrieval / segmentation sheets (sheets), as uint8 RGB arrays or PNG files.

Sits below mmrl/evaluation in the import layers (setup.cfg): it draws what it is given and imports
no evaluator; the one resize it shares with the metrics is mmrl.ops.resize.
"""
