"""Loading weights from our checkpoints and from other projects' files, never silently partially."""
from __future__ import annotations

import torch
from torch import nn


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "state_dict") -> None:
    """``model.load_state_dict(strict=True)`` with an error that lists missing, unexpected and
    mis-shaped keys (PyTorch stops at the first shape mismatch with a less readable message)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match {type(model).__name__}"
                 f"{' ' + model.spec.name if hasattr(model, 'spec') else ''}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"  {title} keys ({len(keys)}): {shown}")
        raise ValueError("\n".join(parts))
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)
