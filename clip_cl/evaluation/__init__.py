"""Evaluation of continual CLIP: metrics (pure tensor functions) and an evaluator over datasets.

See `docs/metrics.md` for every definition, the tie rule and the results schema.
"""

from .evaluator import Evaluator, encode_image_dataset, eval_mode, retrieval_eval, updated_task_eval, zero_shot_eval
from .metrics import class_oracle_recall, continual_metrics, retrieval_recall, topk_accuracy, trajectory_summary

__all__ = [
    "Evaluator",
    "class_oracle_recall",
    "continual_metrics",
    "encode_image_dataset",
    "eval_mode",
    "retrieval_eval",
    "retrieval_recall",
    "topk_accuracy",
    "trajectory_summary",
    "updated_task_eval",
    "zero_shot_eval",
]
