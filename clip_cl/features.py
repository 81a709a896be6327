"""The one entry point where images and texts become L2-normalised features, for every supported model family.

Every trainer, evaluator and benchmark goes through these helpers; they dispatch to the model's adapter
(`clip_cl.adapters`), the only place that knows a family's conventions (pooling, projections, image inputs,
tokenisation, logit scale and bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from .adapters import adapter_for_tokenizer, get_adapter, unwrap_model

__all__ = ["image_features", "text_features", "image_inputs", "tokenize", "concat_tokens", "encode_texts",
           "logit_scale", "logit_bias"]


def image_inputs(model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The keyword inputs of the model's image tower for normalised `[B, 3, H, W]` pixels (SigLIP 2: NaFlex patches,
    `pixel_attention_mask`, `spatial_shapes`; CLIP and SigLIP: the pixels themselves)."""
    return get_adapter(model).image_inputs(model, pixel_values)


def image_features(model, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Projected image embeddings `[B, D]`, L2-normalised unless `normalize=False`."""
    return get_adapter(model).image_features(model, pixel_values, normalize)


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  normalize: bool = True) -> torch.Tensor:
    """Projected text embeddings `[T, D]`, L2-normalised unless `normalize=False`."""
    return get_adapter(model).text_features(model, input_ids, attention_mask, normalize)


def logit_scale(model) -> torch.Tensor:
    """The model's multiplier `exp(logit_scale)` (a scalar tensor, with gradient)."""
    return get_adapter(model).logit_scale(model)


def logit_bias(model) -> torch.Tensor | None:
    """The model's learned logit bias (sigmoid-trained families), else `None`."""
    return get_adapter(model).logit_bias(model)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
    """Tokenise by the tokenizer's family rules: CLIP pads to the longest text, SigLIP / SigLIP 2 pad every text to
    the context length (their text towers pool the last position); truncation to the context length."""
    return adapter_for_tokenizer(tokenizer).tokenize(tokenizer, texts, device)


def concat_tokens(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack two tokenised batches of different lengths (right padding with `pad_id`, attention mask 0).

    Padding with the end-of-text id keeps CLIP's pooling right: it reads the first end-of-text token of each row.
    Families that pad every text to a fixed length give batches of equal length, which are stacked unchanged.

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
    model = unwrap_model(model)
    device = device if device is not None else next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[start:start + batch_size], device)
        out.append(text_features(model, **batch).float())
    if not out:
        raise ValueError("encode_texts got an empty list of texts.")
    return torch.cat(out)
