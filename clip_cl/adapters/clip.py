"""The adapter of `transformers.CLIPModel` (OpenAI CLIP and OpenCLIP checkpoints converted to it)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import CLIPModel

from .base import ModelAdapter

__all__ = ["CLIPAdapter"]


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

        from ..models import CLIPImageProcessor, clip_tokenizer

        size = model.config.vision_config.image_size
        return CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
            tokenizer=tokenizer or clip_tokenizer(model.config.text_config.max_position_embeddings))

    def tiny(self, seed: int = 0, **overrides: Any):
        from ..models import tiny_clip

        return tiny_clip(seed, **overrides)

    def load(self, name: str, **kwargs: Any):
        from ..models import _load_family

        return _load_family(self, name, **kwargs)
