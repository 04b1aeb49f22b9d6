"""core: the D2S-VSE model library (model, losses, data, trainer, metrics). Knows no studies."""

from core.config import Config
from core.errors import UserError

__all__ = ["Config", "UserError", "D2SVSE", "build_model"]

# names from modules that import torch/timm: resolved on first use, so `import core.config`
# (the CLI, config resolution) stays fast
_LAZY = {"D2SVSE": "core.model", "build_model": "core.model"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'core' has no attribute '{name}'")
