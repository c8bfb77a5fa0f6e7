"""Towers: image (ResNet, ViT) and text (BERT family with HF weight import), and the two-tower model."""
