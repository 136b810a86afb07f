"""resnetlab: residual networks and their shortcut connections, as the papers describe them."""
from .blocks import (BasicBlock, Bottleneck, IdentityShortcut, PreActBasicBlock, PreActBottleneck,
                     ProjectionShortcut, ResidualAdd, ZeroPadShortcut)
from .models import ModelOptions, ModelSpec, ResNet, count_parameters, create_model, get_spec, list_models
from .weights import load_weights

__version__ = "0.1.0"

__all__ = ["BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "IdentityShortcut",
           "ZeroPadShortcut", "ProjectionShortcut", "ResidualAdd", "ModelSpec", "ModelOptions", "ResNet",
           "create_model", "list_models", "get_spec", "count_parameters", "load_weights", "__version__"]
