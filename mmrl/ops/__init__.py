"""Low-level array ops shared by towers, heads, objectives and evaluation: masking (NEG_INF, valid
rows, masked softmax, L2 normalisation), masked pooling and the bilinear upsampling of grid maps
(resize: shared by the pictures of mmrl/viz and the metrics of mmrl/evaluation). Imports nothing
from mmrl above it."""
