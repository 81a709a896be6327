"""The one place where images and texts become L2-normalised CLIP features.

Every trainer, evaluator and benchmark goes through these helpers, so the pooling/projection conventions of
`transformers.CLIPModel` (which in transformers 5 returns an output object from `get_*_features`) live here only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = ["image_features", "text_features", "tokenize", "concat_tokens", "encode_texts"]


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


def concat_tokens(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two tokenised batches of different lengths (right padding with `pad_id`, attention mask 0).

    Padding with the end-of-text id keeps CLIP's pooling right: it reads the first end-of-text token of each row.

    Args:
        a, b (`dict`): `{"input_ids", "attention_mask"}` of shapes `[n_a, L_a]` and `[n_b, L_b]`.
        pad_id (`int`): the padding id.

    Returns:
        `dict`: `{"input_ids", "attention_mask"}` of shape `[n_a + n_b, max(L_a, L_b)]`, on `a`'s device.
    """
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    device = a["input_ids"].device

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x.to(device), (0, length - x.shape[1]), value=value)

    return {"input_ids": torch.cat([pad(a["input_ids"], pad_id), pad(b["input_ids"], pad_id)]),
            "attention_mask": torch.cat([pad(a["attention_mask"], 0), pad(b["attention_mask"], 0)])}


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
