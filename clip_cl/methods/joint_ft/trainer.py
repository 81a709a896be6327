from ..base.trainer import CLIPCLTrainer

__all__ = ["JointFTTrainer"]


class JointFTTrainer(CLIPCLTrainer):
    """Joint fine-tuning (upper bound): cross-entropy over all classes seen so far, on all their data, restarting
    from the original model every session. The runner honours `_train_data` and `_restart_from_initial`."""

    _name = "Joint-FT"
    _method = "joint_ft"
    _train_data = "seen"
    _restart_from_initial = True
