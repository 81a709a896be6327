"""Original CLIP: no update, evaluation only (the lower bound of UT-Acc, the upper bound of retained ability)."""

from dataclasses import dataclass

from ..base.config import CLIPCLConfig
from ..registry import register_method

__all__ = ["OriginalConfig"]


@dataclass
class OriginalConfig(CLIPCLConfig):
    r"""
    Configuration of the "Original CLIP" row: the starting model is evaluated after every session (on the classes
    seen so far) and never trained. Training fields are ignored.
    """

    _method = "original"


register_method("original", OriginalConfig, None, "The starting model, never updated (evaluation only).")
