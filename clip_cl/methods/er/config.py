"""`ERConfig`: experience replay on a replay set of image-caption pairs and a memory of the update data."""

from dataclasses import dataclass, field

from ..base.rehearsal import RehearsalConfig

__all__ = ["ERConfig"]


@dataclass
class ERConfig(RehearsalConfig):
    r"""
    Configuration of experience replay (ER): the loss of a micro-batch is

    `CE(update batch) + replay_weight * [contrastive(replay pairs) + CE_seen(memory exemplars)]`,

    one replay draw per micro-batch. The replay set and memory fields are those of [`RehearsalConfig`]; everything
    else is [`CLIPCLConfig`]'s.

    Parameters that control the replay loss:
        replay_weight (`float`, defaults to 1.0):
            Weight of the replay loss (1: replayed and new data count the same, as in Chaudhry et al. 2019).
    """

    _method = "er"

    replay_weight: float = field(default=1.0, metadata={"help": "Weight of the replay loss (default 1)."})

    def __post_init__(self):
        if self.replay_weight < 0:
            raise ValueError(f"replay_weight must be >= 0, got {self.replay_weight}.")
        super().__post_init__()
