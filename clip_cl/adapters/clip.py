"""The adapter of `transformers.CLIPModel` (OpenAI CLIP and OpenCLIP checkpoints converted to it), and the tiny CLIP.

The tiny model uses the real CLIP BPE vocabulary (49,408 ids), shipped in `clip_cl/assets/clip_tokenizer` and rebuilt
offline from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (see `docs/tokenizer.md`), so every prompt is tokenised exactly as
for `openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

from .base import ModelAdapter

__all__ = ["CLIPAdapter", "TINY_CLIP_CONFIG", "TOKENIZER_DIR", "clip_tokenizer", "tiny_clip"]

# transformers 5's default CLIP image processor is the torchvision back-end (torchvision is a dependency): the one a
# Hub checkpoint loads with, and the one clip_cl.data's evaluation transform reproduces pixel for pixel.
from transformers import CLIPImageProcessor

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "clip_tokenizer"

# The tiny CLIP used by tests, the quickstart and benchmarks: 32x32 images, 8x8 patches (16 tokens + CLS),
# two transformer layers of width 64 per tower, a 64-d joint space. ~3.4M parameters, 3.2M of them the
# token embedding of the real vocabulary.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    },
    "projection_dim": 64,
}


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real CLIP tokenizer, loaded from the fixture inside the package (no network).

    Args:
        model_max_length (`int`, defaults to 77): maximum sequence length (CLIP's context length).

    Returns:
        `CLIPTokenizer`: the tokenizer; `"a photo of a cat"` gives `[49406, 320, 1125, 539, 320, 2368, 49407]`.
    """
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=model_max_length)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_clip(seed: int = 0, **overrides: Any) -> tuple[CLIPModel, CLIPProcessor]:
    """Build a small randomly initialised `CLIPModel` with the real CLIP tokenizer.

    Args:
        seed (`int`, defaults to 0): seed of the random initialisation, so two calls give identical weights.
        **overrides: keys merged into [`TINY_CLIP_CONFIG`], e.g. `vision_config={"image_size": 64}` or
            `projection_dim=32`. The `max_position_embeddings` of the text tower also sets the tokenizer's
            `model_max_length`.

    Returns:
        `tuple[CLIPModel, CLIPProcessor]`: the model (eval mode) and a processor whose image processor resizes and
        centre-crops to the model's `image_size`.
    """
    cfg = _merge(TINY_CLIP_CONFIG, overrides)
    config = CLIPConfig(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                        projection_dim=cfg["projection_dim"],
                        **{k: v for k, v in cfg.items() if k not in ("text_config", "vision_config", "projection_dim")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval()
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = clip_tokenizer(config.text_config.max_position_embeddings)
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)




class CLIPAdapter(ModelAdapter):
    """CLIP: softmax-contrastive, no logit bias; BPE texts framed `[<|startoftext|>, words, <|endoftext|>]`, padded
    to the longest text of a batch (the text tower pools the first end token, so padding never changes a feature);
    fixed-size image crops; projections `visual_projection` and `text_projection` outside the towers' modules."""

    family: ClassVar[str] = "clip"
    model_class: ClassVar[type] = CLIPModel
    tokenizer_classes: ClassVar[tuple[str, ...]] = ("CLIPTokenizer", "CLIPTokenizerFast")
    image_prefixes: ClassVar[tuple[str, ...]] = ("vision_model.", "visual_projection.")
    text_prefixes: ClassVar[tuple[str, ...]] = ("text_model.", "text_projection.")
    projections: ClassVar[tuple[str, ...]] = ("visual_projection", "text_projection")
    text_padding: ClassVar[str] = "longest"
    default_text_length: ClassVar[int] = 77
    pair_loss: ClassVar[str] = "softmax"
    tiny_name: ClassVar[str] = "tiny-random"

    def processor_for(self, model, tokenizer=None):
        """The packaged CLIP tokenizer and a standard image processor of the model's resolution."""
        from transformers import CLIPProcessor

        size = model.config.vision_config.image_size
        return CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
            tokenizer=tokenizer or clip_tokenizer(model.config.text_config.max_position_embeddings))

    def tiny(self, seed: int = 0, **overrides: Any):
        return tiny_clip(seed, **overrides)

    def load(self, name: str, **kwargs: Any):
        from ..models import _load_family

        return _load_family(self, name, **kwargs)
