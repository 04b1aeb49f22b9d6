"""core: the D2S-VSE model library (model, losses, data, trainer, metrics). Knows no studies."""

from core.config import Config
from core.errors import UserError

__all__ = ["Config", "UserError"]
