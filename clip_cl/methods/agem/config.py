"""`AGEMConfig`: A-GEM's gradient projection against one reference gradient of the replay data."""

from dataclasses import dataclass

from ..base.rehearsal import RehearsalConfig

__all__ = ["AGEMConfig"]


@dataclass
class AGEMConfig(RehearsalConfig):
    r"""
    Configuration of A-GEM (Chaudhry et al., ICLR 2019) as in the official CL-CLIP code (`methods/agem.py`): the
    update gradient `g` (cross-entropy on the session's classes, accumulated over the micro-batches of an optimizer
    step) is projected when it conflicts with the reference gradient `g_ref` of one replay draw per optimizer step,

    `g <- g - (g . g_ref / g_ref . g_ref) g_ref`   if `g . g_ref < 0`.

    The reference loss is `contrastive(replay pairs) + CE_seen(memory exemplars)`. A-GEM has no knob of its own: the
    replay set and memory fields are those of [`RehearsalConfig`]; everything else is [`CLIPCLConfig`]'s.
    """

    _method = "agem"
