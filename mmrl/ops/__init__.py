"""Low-level array ops shared by towers, heads, objectives and evaluation: masking (NEG_INF, valid
rows, masked softmax, L2 normalisation) and masked pooling. Imports nothing from mmrl above it."""
