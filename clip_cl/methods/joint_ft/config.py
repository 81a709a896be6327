from dataclasses import dataclass

from ..base.config import CLIPCLConfig

__all__ = ["JointFTConfig"]


@dataclass
class JointFTConfig(CLIPCLConfig):
    r"""
    Configuration of Joint-FT, the upper bound of UT-Acc: session `t` fine-tunes the *original* model on the data of
    sessions 1..t together (in OST this is plain FT on all classes). No extra fields.
    """

    _method = "joint_ft"
