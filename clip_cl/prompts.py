"""Prompt templates: the one place where class names become text.

Defaults are the paper's (Ding et al. 2022): training prompts `"this is a photo of {} in the scene ."` and zero-shot
prompts `"this is a photo of {} ."`. Any list of templates is an ensemble: a class's text feature is the renormalised
mean of its normalised per-template features (Radford et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .features import encode_texts, text_features, tokenize

__all__ = [
    "DEFAULT_TRAIN_TEMPLATES",
    "DEFAULT_ZERO_SHOT_TEMPLATES",
    "check_templates",
    "format_prompts",
    "class_text_features",
    "class_text_features_with_grad",
]

DEFAULT_TRAIN_TEMPLATES: tuple[str, ...] = ("this is a photo of {} in the scene .",)
DEFAULT_ZERO_SHOT_TEMPLATES: tuple[str, ...] = ("this is a photo of {} .",)


def check_templates(templates: Sequence[str]) -> list[str]:
    """Validate templates: a non-empty list of strings, each with exactly one `{}` placeholder."""
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ValueError("The list of prompt templates is empty; give at least one, e.g. 'a photo of a {}.'.")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"Prompt template {t!r} must be a string with exactly one '{{}}' where the class name goes.")
    return templates


def format_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: `[c0/t0, c0/t1, ..., c1/t0, ...]`."""
    templates = check_templates(templates)
    return [t.format(name) for name in class_names for t in templates]


def _ensemble(feats: torch.Tensor, num_classes: int, num_templates: int) -> torch.Tensor:
    if num_templates == 1:
        return feats
    return F.normalize(feats.view(num_classes, num_templates, -1).mean(1), dim=-1)


@torch.no_grad()
def class_text_features(model, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                        batch_size: int = 256, device=None) -> torch.Tensor:
    """Normalised, template-ensembled text features `[C, D]` of the classes, without gradient (float32)."""
    templates = check_templates(templates)
    feats = encode_texts(model, tokenizer, format_prompts(class_names, templates), batch_size, device)
    return _ensemble(feats, len(class_names), len(templates))


def class_text_features_with_grad(model, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                                  device=None) -> torch.Tensor:
    """As [`class_text_features`] but in one differentiable text-encoder call (used while training the text tower)."""
    templates = check_templates(templates)
    batch = tokenize(tokenizer, format_prompts(class_names, templates), device)
    return _ensemble(text_features(model, **batch), len(class_names), len(templates))
