"""The one place where images and texts become L2-normalised CLIP features.

Every trainer, evaluator and benchmark goes through these helpers, so the pooling/projection conventions of
`transformers.CLIPModel` (which in transformers 5 returns an output object from `get_*_features`) live here only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = ["image_features", "text_features", "tokenize", "encode_texts"]


def _unwrap(model) -> CLIPModel:
    """The bare `CLIPModel` under DDP/FSDP/compile wrappers (their `forward` is not what we call)."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def image_features(model, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Projected image embeddings `[B, D]`, L2-normalised unless `normalize=False`."""
    feats = _unwrap(model).get_image_features(pixel_values=pixel_values).pooler_output
    return F.normalize(feats, dim=-1) if normalize else feats


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  normalize: bool = True) -> torch.Tensor:
    """Projected text embeddings `[T, D]`, L2-normalised unless `normalize=False`."""
    feats = _unwrap(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return F.normalize(feats, dim=-1) if normalize else feats


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
    """Tokenise with padding to the longest text and truncation to the model's context length."""
    enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


@torch.no_grad()
def encode_texts(model, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 256,
                 device=None) -> torch.Tensor:
    """Normalised features of many texts, batched, without gradient. Returns `[len(texts), D]` in float32."""
    model = _unwrap(model)
    device = device if device is not None else next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[start:start + batch_size], device)
        out.append(text_features(model, **batch).float())
    if not out:
        raise ValueError("encode_texts got an empty list of texts.")
    return torch.cat(out)
