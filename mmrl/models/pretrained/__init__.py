"""Pretrained image towers: PyTorch state dicts (torchvision ResNet, timm / Hugging Face ViT) mapped
onto our Flax towers, one-channel stems, and the name -> local file resolution of
config.model.image.weights.

Modules:
  report              ImportReport (imported / unused / missing / mismatched), the fit check.
  files               reading .safetensors / .pth / .bin / folders into {name: numpy array}.
  stems               1-channel kernels from RGB ones, with the input normalisation folded in.
  torchvision_resnet  resnet_params_from_torchvision(state_dict, *, model_name, in_channels, ...)
  timm_vit            vit_params_from_timm(state_dict, *, model_name, in_channels, image_size, ...)
  catalog             the named weights (torchvision:resnet50, timm:..., hf:...), where each is
                      looked for on disk, and the fetch command.
  init                applying config.model.image.weights to a train state's variables.
The mapping functions are pure (numpy in, numpy out) and never touch the network.
"""
from mmrl.models.pretrained.report import ImportReport, WeightsMismatchError
from mmrl.models.pretrained.timm_vit import vit_params_from_timm
from mmrl.models.pretrained.torchvision_resnet import resnet_params_from_torchvision

__all__ = ["ImportReport", "WeightsMismatchError", "resnet_params_from_torchvision",
           "vit_params_from_timm"]
