"""resnetlab: residual networks and their shortcut connections, as the papers describe them."""
from .blocks import (BasicBlock, Bottleneck, IdentityShortcut, NoShortcut, PreActBasicBlock, PreActBottleneck,
                     ProjectionShortcut, ResidualAdd, ZeroPadShortcut)
from .models import ModelOptions, ModelSpec, ResNet, count_parameters, create_model, get_spec, list_models

__version__ = "0.1.0"


def load_weights(model, path, **kwargs):
    """Load weights into ``model`` from one of our checkpoints, a safetensors file, a torchvision ``.pth``
    state_dict or an akamaster CIFAR checkpoint. See :func:`resnetlab.weights.load_weights`."""
    from .weights import load_weights as _load
    return _load(model, path, **kwargs)


__all__ = ["BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "IdentityShortcut",
           "ZeroPadShortcut", "ProjectionShortcut", "NoShortcut", "ResidualAdd", "ModelSpec", "ModelOptions", "ResNet",
           "create_model", "list_models", "get_spec", "count_parameters", "load_weights", "__version__"]
