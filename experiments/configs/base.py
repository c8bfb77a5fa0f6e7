"""Re-export of the shared config schema, which lives in `mmrl/config/schema.py`.

Method configs start from `base_config()`; kept here so `from experiments.configs.base import ...`
keeps working. Not a runnable config by itself (no data set); see demo.py / convirt.py.
"""
from __future__ import annotations

from mmrl.config.schema import base_config
from mmrl.config.schema import convirt_augmentation
from mmrl.config.schema import crop_only_augmentation
from mmrl.config.schema import make_tiny

__all__ = ["base_config", "convirt_augmentation", "crop_only_augmentation", "make_tiny"]
