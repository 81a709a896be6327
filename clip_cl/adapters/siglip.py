"""The adapters of `transformers.SiglipModel` (SigLIP, and SigLIP 2's fixed-resolution checkpoints) and
`transformers.Siglip2Model` (SigLIP 2's NaFlex checkpoints)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import Siglip2Model, SiglipModel

from .base import ModelAdapter

__all__ = ["SiglipAdapter", "Siglip2Adapter", "TINY_SIGLIP_CONFIG", "TINY_SIGLIP2_CONFIG", "SIGLIP_TOKENIZER_DIR",
           "SIGLIP2_TOKENIZER_DIR", "naflex_inputs", "size_for_patch_budget"]

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: SentencePiece fixture of `tiny-random-siglip` (built by `recipes/build_tokenizers.py`).
SIGLIP_TOKENIZER_DIR = _ASSETS / "siglip_tokenizer"
#: Byte-fallback BPE (Gemma-style) fixture of `tiny-random-siglip2`.
SIGLIP2_TOKENIZER_DIR = _ASSETS / "siglip2_tokenizer"

_TINY_TEXT = {"vocab_size": 2000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": 64}
_TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "patch_size": 8}
#: `tiny-random-siglip`: 32x32 images in 8x8 patches, two layers of width 64 per tower, 64-d joint space, text length
#: 64 (SigLIP's), the 2,000-piece SentencePiece fixture (`</s>` = 1 ends and pads every text, `<unk>` = 2).
TINY_SIGLIP_CONFIG: dict[str, Any] = {
    "text_config": {**_TINY_TEXT, "pad_token_id": 1, "eos_token_id": 1, "bos_token_id": None},
    "vision_config": {**_TINY_VISION, "image_size": 32},
}
#: `tiny-random-siglip2`: as above with NaFlex inputs of at most 16 patches of 8x8 (a 32x32 square), and the
#: 2,000-piece BPE fixture (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4).
TINY_SIGLIP2_CONFIG: dict[str, Any] = {
    "text_config": {**_TINY_TEXT, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
    "vision_config": {**_TINY_VISION, "num_patches": 16},
}
_TINY_MAX_NUM_PATCHES = 16


def _image_processor(name: str, **kwargs):
    import transformers

    # Without torchvision transformers serves the PIL back-end; ask for it directly to avoid a warning.
    try:
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available() and hasattr(transformers, name + "Pil"):
            return getattr(transformers, name + "Pil")(**kwargs)
    except ImportError:  # pragma: no cover
        pass
    return getattr(transformers, name)(**kwargs)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build(model_cls, config_cls, cfg: dict, seed: int):
    config = config_cls(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                        **{k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.eval()


def size_for_patch_budget(height: int, width: int, patch_size: int, max_num_patches: int,
                          eps: float = 1e-5) -> tuple[int, int]:
    """SigLIP 2's NaFlex resize target: the largest size, multiple of `patch_size` on both sides and with the aspect
    ratio kept as well as the grid allows, whose patch count fits `max_num_patches` (the binary search of
    transformers' `Siglip2ImageProcessor`, reimplemented so the result is the same)."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        scale = (lo + hi) / 2
        if (scaled(scale, height) / patch_size) * (scaled(scale, width) / patch_size) <= max_num_patches:
            lo = scale
        else:
            hi = scale
    return scaled(lo, height), scaled(lo, width)


def naflex_inputs(pixel_values: torch.Tensor, patch_size: int, max_num_patches: int) -> dict[str, torch.Tensor]:
    """SigLIP 2's NaFlex image inputs from normalised `[B, 3, H, W]` pixels (one size for the whole batch).

    The batch is resized (bilinear, antialiased) to the patch budget, cut into `patch_size` patches in the order of
    `Siglip2ImageProcessor` (rows of patches, each patch flattened as `(row, column, channel)`), and padded to
    `max_num_patches`. The processor resizes before normalising; normalisation is affine per channel, so resizing
    the normalised pixels gives the same values up to the 8-bit rounding the processor does in between.

    Returns:
        `dict`: `pixel_values` `[B, max_num_patches, patch_size**2 * 3]`, `pixel_attention_mask`
        `[B, max_num_patches]` (int32, 1 = real patch) and `spatial_shapes` `[B, 2]` (patch rows, patch columns).
    """
    b, c, h, w = pixel_values.shape
    th, tw = size_for_patch_budget(h, w, patch_size, max_num_patches)
    if (th, tw) != (h, w):
        pixel_values = F.interpolate(pixel_values, size=(th, tw), mode="bilinear", align_corners=False,
                                     antialias=True)
    nh, nw = th // patch_size, tw // patch_size
    patches = pixel_values.reshape(b, c, nh, patch_size, nw, patch_size).permute(0, 2, 4, 3, 5, 1)
    patches = patches.reshape(b, nh * nw, patch_size * patch_size * c)
    n = nh * nw
    mask = torch.zeros(b, max_num_patches, dtype=torch.int32, device=pixel_values.device)
    mask[:, :n] = 1
    if n < max_num_patches:
        patches = F.pad(patches, (0, 0, 0, max_num_patches - n))
    shapes = torch.tensor([[nh, nw]], dtype=torch.long, device=pixel_values.device).expand(b, 2)
    return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


class SiglipAdapter(ModelAdapter):
    """SigLIP: sigmoid pair loss with a learned logit bias; SentencePiece texts `[words, </s>]` padded with `</s>` to
    64 tokens (the text tower pools the last position, so every text must have the training length); fixed-size
    image inputs; the towers' projections are their `head` modules (`text_model.head`; the image tower's attention
    pooling head)."""

    family: ClassVar[str] = "siglip"
    model_class: ClassVar[type] = SiglipModel
    tokenizer_classes: ClassVar[tuple[str, ...]] = ("SiglipTokenizer",)
    image_prefixes: ClassVar[tuple[str, ...]] = ("vision_model.",)
    text_prefixes: ClassVar[tuple[str, ...]] = ("text_model.",)
    projections: ClassVar[tuple[str, ...]] = ("text_model.head", "vision_model.head.mlp.fc1",
                                              "vision_model.head.mlp.fc2")
    # nn.MultiheadAttention reads `out_proj.weight` itself; a wrapper around `out_proj` would never run.
    unwrappable_linears: ClassVar[tuple[str, ...]] = ("head.attention.out_proj",)
    text_padding: ClassVar[str] = "max_length"
    default_text_length: ClassVar[int] = 64
    pair_loss: ClassVar[str] = "sigmoid"
    tiny_name: ClassVar[str] = "tiny-random-siglip"
    _tiny_config: ClassVar[dict] = TINY_SIGLIP_CONFIG
    _tokenizer_dir: ClassVar[Path] = SIGLIP_TOKENIZER_DIR

    def text_length(self, tokenizer, model=None) -> int:
        """64, SigLIP's training length (what `transformers`' processors and pipeline pad to), or less when the
        model's position table is shorter. The tokenizer's own limit is not used: Gemma's is far longer."""
        length = self.default_text_length
        if model is not None:
            positions = getattr(_bare_config(model).text_config, "max_position_embeddings", None)
            if positions:
                length = min(length, int(positions))
        return length

    def tokenizer(self, path: str | Path | None = None):
        """The family's tokenizer from a folder (default: the packaged tiny fixture), offline."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path or self._tokenizer_dir))

    def _config_classes(self):
        from transformers import SiglipConfig

        return SiglipConfig

    def processor_for(self, model, tokenizer=None):
        """A processor for a model that was saved without one: the packaged tokenizer and the family's standard
        image processor at the model's resolution."""
        from transformers import SiglipProcessor

        size = model.config.vision_config.image_size
        image_processor = _image_processor("SiglipImageProcessor", size={"height": size, "width": size})
        return SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer or self.tokenizer())

    def tiny(self, seed: int = 0, **overrides: Any):
        cfg = _merge(self._tiny_config, overrides)
        model = _build(self.model_class, self._config_classes(), cfg, seed)
        return model, self.processor_for(model)

    def load(self, name: str, **kwargs: Any):
        from ..models import _load_family

        return _load_family(self, name, **kwargs)


class Siglip2Adapter(SiglipAdapter):
    """SigLIP 2 (NaFlex, `Siglip2Model`): as SigLIP, with Gemma-style texts (no start or end token added by the
    tokenizer; padded to 64) and NaFlex image inputs: the image resized to a patch budget (`max_num_patches`), its
    patches flattened and padded, with `pixel_attention_mask` and `spatial_shapes` ([`naflex_inputs`])."""

    family: ClassVar[str] = "siglip2"
    model_class: ClassVar[type] = Siglip2Model
    tokenizer_classes: ClassVar[tuple[str, ...]] = ("Siglip2Tokenizer", "GemmaTokenizer", "GemmaTokenizerFast")
    tiny_name: ClassVar[str] = "tiny-random-siglip2"
    _tiny_config: ClassVar[dict] = TINY_SIGLIP2_CONFIG
    _tokenizer_dir: ClassVar[Path] = SIGLIP2_TOKENIZER_DIR

    def _config_classes(self):
        from transformers import Siglip2Config

        return Siglip2Config

    def max_num_patches(self, model) -> int:
        """The patch budget of the image inputs: the vision tower's position grid (`num_patches`)."""
        return int(model.config.vision_config.num_patches)

    def image_inputs(self, model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        config = _bare_config(model).vision_config
        return naflex_inputs(pixel_values, int(config.patch_size), int(config.num_patches))

    def processor_for(self, model, tokenizer=None):
        from transformers import Siglip2Processor

        config = model.config.vision_config
        image_processor = _image_processor("Siglip2ImageProcessor", patch_size=config.patch_size,
                                           max_num_patches=config.num_patches)
        return Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer or self.tokenizer())


def _bare_config(model):
    from .base import unwrap_model

    return unwrap_model(model).config
