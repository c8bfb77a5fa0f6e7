"""mmrl: chest X-ray representations learned from radiology reports, with local alignment.

Importable with no flags (Colab-friendly). Subpackages: models, heads, objectives, parallel,
train, evaluation, viz. The input pipeline lives in the sibling package `data_pipeline`.
"""
__version__ = "0.1.0"
