"""resnetlab: residual networks and their shortcut connections, as the papers describe them.

The names below are imported on first use, so ``import resnetlab`` (and ``resnetlab --help``) does not
import torch until something needs it.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "blocks": ("BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "IdentityShortcut",
               "ZeroPadShortcut", "ProjectionShortcut", "AvgPoolProjectionShortcut", "NoShortcut", "ResidualAdd"),
    "models": ("ModelConfig", "ModelSpec", "ResNet", "create_model", "list_models", "get_spec",
               "count_parameters"),
    "weights": ("load_weights",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [*_MODULE_OF, "__version__"]


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
