from dataclasses import dataclass

from ..base.config import CLIPCLConfig

__all__ = ["FTConfig"]


@dataclass
class FTConfig(CLIPCLConfig):
    r"""
    Configuration of plain fine-tuning (FT): cross-entropy over `logit_scale * cos(image, class-prompt text)` for the
    session's classes, nothing else. It has no fields beyond [`CLIPCLConfig`]; it exists so that `method: ft` maps
    to a config class like every other method.
    """

    _method = "ft"
