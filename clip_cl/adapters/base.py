"""`ModelAdapter`: everything clip-cl needs to know about one family of dual-encoder models.

The rest of the package never names a model family: it asks the adapter of the model (or of the tokenizer) for image
and text features, the logit scale and bias, the tokenisation rules, the pseudo-texts VR-LwF may build, the image
inputs the model takes, the parameter groups of the two towers and the linear layers RKR and LoRA wrap. A family is
one subclass registered in [`clip_cl.adapters.registry`]; `docs/models.md` explains how to add one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModelAdapter", "PseudoTextRules", "unwrap_model"]

# Wrapper prefixes stripped from parameter names (DDP, peft, torch.compile).
_WRAPPER_PREFIXES = ("module.", "base_model.model.", "_orig_mod.")
# Vocabulary pieces that are never text: SentencePiece/Gemma placeholders such as `<unused12>` or `<pad>`-like controls.
_UNUSED_PIECE = re.compile(r"^<(unused\d+|\[?[a-z_]*mask[a-z_]*\]?|pad|s|/s|unk|bos|eos)>$")


def unwrap_model(model):
    """The bare model under DDP / FSDP / torch.compile wrappers (their `forward` is not what adapters call)."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


@dataclass(frozen=True)
class PseudoTextRules:
    """How a family's tokenizer frames a text, read once per tokenizer by [`ModelAdapter.pseudo_text_rules`].

    Attributes:
        prefix (`tuple[int]`): ids the tokenizer puts before the words (CLIP: start token; SigLIP: none).
        suffix (`tuple[int]`): ids it puts after them (CLIP and SigLIP: the end token; SigLIP 2's Gemma: none).
        allowed (`torch.Tensor`): sorted ids a pseudo-word may take (no special, padding or unused id).
        pad_id (`int`): the padding id.
        length (`int` or `None`): the padded length every text must have (SigLIP: 64), `None` = no padding needed.
        padding_side (`str`): "right" or "left".
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    allowed: torch.Tensor
    pad_id: int
    length: int | None
    padding_side: str = "right"


class ModelAdapter:
    """Base class of the model adapters; one subclass per family, one instance in the registry.

    Subclasses set the class attributes and override the few hooks where their family differs (image inputs,
    tokenisation, the pair loss of ZSCL, the tiny test model).
    """

    #: Short family name used in messages and docs ("clip", "siglip", "siglip2").
    family: ClassVar[str] = ""
    #: The `transformers` model class (subclasses match too).
    model_class: ClassVar[type] = nn.Module
    #: Names of tokenizer classes of this family (for tokenisation without the model at hand).
    tokenizer_classes: ClassVar[tuple[str, ...]] = ()
    #: Parameter-name prefixes of the image and text towers (their projections included).
    image_prefixes: ClassVar[tuple[str, ...]] = ()
    text_prefixes: ClassVar[tuple[str, ...]] = ()
    #: The linear maps into the joint space (module names or dotted suffixes); `include_projections=False` skips them.
    projections: ClassVar[tuple[str, ...]] = ()
    #: `nn.Linear` modules whose `forward` the model never calls (their weight is read directly), so adapters on them
    #: would never run: never selected as RKR / LoRA targets.
    unwrappable_linears: ClassVar[tuple[str, ...]] = ()
    #: "longest" (pad a batch to its longest text) or "max_length" (pad every text to the text length).
    text_padding: ClassVar[str] = "longest"
    #: The text length of "max_length" padding when neither tokenizer nor model says otherwise.
    default_text_length: ClassVar[int] = 77
    #: The pair loss the family was trained with: "softmax" (contrastive) or "sigmoid".
    pair_loss: ClassVar[str] = "softmax"
    #: Name accepted by `load_model` for the family's tiny random test model.
    tiny_name: ClassVar[str] = ""

    # ------------------------------------------------------------------ matching
    def matches(self, model) -> bool:
        return isinstance(unwrap_model(model), self.model_class)

    def matches_tokenizer(self, tokenizer) -> bool:
        names = {cls.__name__ for cls in type(tokenizer).__mro__}
        return bool(names & set(self.tokenizer_classes))

    # ------------------------------------------------------------------ features
    def image_inputs(self, model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keyword inputs of the image tower for a batch of normalised `[B, 3, H, W]` pixels.

        This is the hook a device-side image path plugs into: whatever produced the float pixels, the family turns
        them into what its vision tower takes (fixed-size crops pass through unchanged).
        """
        return {"pixel_values": pixel_values}

    def image_features(self, model, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Projected image embeddings `[B, D]` from `get_image_features`, L2-normalised unless `normalize=False`."""
        feats = unwrap_model(model).get_image_features(**self.image_inputs(model, pixel_values)).pooler_output
        return F.normalize(feats, dim=-1) if normalize else feats

    def text_features(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      normalize: bool = True) -> torch.Tensor:
        """Projected text embeddings `[T, D]` from `get_text_features`, L2-normalised unless `normalize=False`."""
        feats = unwrap_model(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward_inputs(self, model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None) -> dict[str, Any]:
        """Keyword arguments of one `model(...)` call on images and texts (outputs `.image_embeds`, `.text_embeds`)."""
        return {**self.image_inputs(model, pixel_values), "input_ids": input_ids, "attention_mask": attention_mask,
                "return_dict": True}

    # ------------------------------------------------------------------ logits
    def logit_scale(self, model) -> torch.Tensor:
        """The multiplier `exp(logit_scale)` (a scalar tensor with the parameter's gradient)."""
        return unwrap_model(model).logit_scale.exp()

    def logit_bias(self, model) -> torch.Tensor | None:
        """The learned logit bias of sigmoid-trained families, `None` otherwise."""
        bias = getattr(unwrap_model(model), "logit_bias", None)
        return bias.reshape(()) if isinstance(bias, torch.Tensor) else None

    def pair_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float,
                    bias: torch.Tensor | float | None = None) -> torch.Tensor:
        """The family's image-text logits `scale * image @ text.T (+ bias)` of normalised features, `[B, T]`.

        Classification (softmax cross-entropy and softmax distillation) leaves out the bias: a constant added to a
        whole row cancels in the softmax. The sigmoid pair loss of SigLIP needs it.
        """
        logits = scale * image_embeds @ text_embeds.t()
        return logits + bias if bias is not None else logits

    def pair_distillation_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               temperature: float = 1.0, over: str = "texts") -> torch.Tensor:
        """Distillation of image-text pair logits `[B_img, T]` in the family's own form (ZSCL's image-text term).

        `"softmax"` families: the KL of the softmax over texts (`over="texts"`, one distribution per image) or over
        images (`over="images"`). `"sigmoid"` families: the binary KL of every pair's sigmoid probability, summed
        over the texts (or images) and averaged over the other side. Pass logits built by [`pair_logits`] with the
        bias for sigmoid families.
        """
        from ..losses import kd_kl_loss, sigmoid_kd_loss

        if over not in ("texts", "images"):
            raise ValueError(f"over must be 'texts' or 'images', got {over!r}.")
        s, t = (student_logits, teacher_logits) if over == "texts" else (student_logits.t(), teacher_logits.t())
        if self.pair_loss == "sigmoid":
            return sigmoid_kd_loss(s, t, temperature)
        return kd_kl_loss(s, t, temperature)

    # ------------------------------------------------------------------ tokenisation
    def text_length(self, tokenizer, model=None) -> int:
        """The context length texts are truncated (and, for "max_length" families, padded) to."""
        if model is not None:
            length = getattr(unwrap_model(model).config.text_config, "max_position_embeddings", None)
            if length:
                return int(length)
        length = getattr(tokenizer, "model_max_length", None)
        if length and length < 100_000:  # transformers' "no limit" is a huge number
            return int(length)
        return self.default_text_length

    def tokenize(self, tokenizer, texts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
        """`{"input_ids", "attention_mask"}` of the texts by the family's rules (padding, truncation)."""
        if self.text_padding == "max_length":
            enc = tokenizer(list(texts), padding="max_length", truncation=True,
                            max_length=self.text_length(tokenizer), return_tensors="pt")
        else:
            enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if "attention_mask" not in out:  # tokenizers that return no mask attend to every position
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        return {k: v.to(device) for k, v in out.items()}

    def special_token_ids(self, tokenizer, model=None) -> set[int]:
        """Every id that is not a word: the tokenizer's special and added tokens and the model config's ids."""
        ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "mask_token_id"):
            value = getattr(tokenizer, name, None)
            if isinstance(value, int):
                ids.add(value)
        ids.update(int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {})
        if model is not None:
            text_config = unwrap_model(model).config.text_config
            for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
                value = getattr(text_config, name, None)
                if isinstance(value, int):
                    ids.add(value)
        return ids

    def unused_token_ids(self, tokenizer, vocab_size: int) -> set[int]:
        """Ids the model has but the tokenizer never produces from text: rows past the tokenizer's vocabulary and
        placeholder pieces such as `<unused0>` or SentencePiece control pieces."""
        n = len(tokenizer)
        unused = set(range(n, vocab_size))
        sp = getattr(tokenizer, "sp_model", None)
        if sp is not None:  # SentencePiece knows which pieces are controls / unused / unknown
            unused.update(i for i in range(min(sp.get_piece_size(), vocab_size))
                          if sp.is_control(i) or sp.is_unused(i) or sp.is_unknown(i))
        for token, i in tokenizer.get_vocab().items():
            if i < vocab_size and _UNUSED_PIECE.match(str(token)):
                unused.add(int(i))
        return unused

    def sampleable_token_ids(self, tokenizer, model) -> torch.Tensor:
        """Sorted ids VR-LwF may draw as pseudo-words: the model's vocabulary without special, padding and unused
        ids (the tokenizer's and the config's)."""
        from ..losses import allowed_token_ids

        vocab_size = int(unwrap_model(model).config.text_config.vocab_size)
        exclude = self.special_token_ids(tokenizer, model) | self.unused_token_ids(tokenizer, vocab_size)
        return allowed_token_ids(vocab_size, sorted(exclude))

    def text_frame(self, tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """`(prefix, suffix)`: the ids the tokenizer adds around a text's words, read from the tokenizer itself."""
        probe = "a photo"
        words = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe)["input_ids"]
        for start in range(len(full) - len(words) + 1):
            if full[start:start + len(words)] == words:
                return tuple(full[:start]), tuple(full[start + len(words):])
        raise ValueError(f"Cannot find the words of {probe!r} inside the tokenizer's own encoding {full}; the "
                         f"{type(tokenizer).__name__} adds something other than special tokens around a text.")

    def pseudo_text_rules(self, tokenizer, model) -> PseudoTextRules:
        """The rules VR-LwF builds its pseudo-texts by: frame, sampleable ids and padding of the family."""
        prefix, suffix = self.text_frame(tokenizer)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = suffix[-1] if suffix else 0
        length = self.text_length(tokenizer, model) if self.text_padding == "max_length" else None
        return PseudoTextRules(prefix=prefix, suffix=suffix, allowed=self.sampleable_token_ids(tokenizer, model),
                               pad_id=int(pad_id), length=length,
                               padding_side=getattr(tokenizer, "padding_side", "right") or "right")

    # ------------------------------------------------------------------ parameter groups and linear targets
    def tower_of(self, name: str) -> str | None:
        """'image', 'text' or None (e.g. `logit_scale`, `logit_bias`) for a parameter or module name."""
        for prefix in _WRAPPER_PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith(self.image_prefixes):
            return "image"
        if name.startswith(self.text_prefixes):
            return "text"
        return None

    def is_projection(self, module_name: str) -> bool:
        return any(module_name == p or module_name.endswith("." + p) for p in self.projections)

    def can_wrap(self, module_name: str) -> bool:
        """Whether an adapter (RKR rectifier, LoRA) on this `nn.Linear` would run in the model's forward."""
        return not any(module_name == p or module_name.endswith("." + p) for p in self.unwrappable_linears)

    # ------------------------------------------------------------------ models and processors
    def tiny(self, seed: int = 0, **overrides: Any):
        """The family's tiny random model and processor for tests (see `clip_cl.models`)."""
        raise NotImplementedError(f"No tiny test model for the {self.family!r} family.")

    def load(self, name: str, **kwargs: Any):
        """`(model, processor)` from a Hub id or folder whose config is of this family (float32 by default)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r})"
