"""Loading CLIP models and processors: real checkpoints through `from_pretrained`, and a tiny random model for tests.

The tiny model uses the real CLIP BPE vocabulary (49,408 ids), shipped in `clip_cl/assets/clip_tokenizer` and rebuilt
offline from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (see `docs/tokenizer.md`), so every prompt is tokenised exactly as
for `openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

# transformers 5's default CLIP image processor is the torchvision back-end (torchvision is a dependency): the one a
# Hub checkpoint loads with, and the one clip_cl.data's evaluation transform reproduces pixel for pixel.
from transformers import CLIPImageProcessor

__all__ = ["TINY_CLIP_CONFIG", "TOKENIZER_DIR", "clip_tokenizer", "load_clip", "tiny_clip"]

TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"

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


def load_clip(
    name_or_path: str | os.PathLike,
    *,
    local_files_only: bool = False,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> tuple[CLIPModel, CLIPProcessor]:
    """Load a `CLIPModel` and its `CLIPProcessor` from a Hub id or a local folder.

    The special name `"tiny-random"` returns [`tiny_clip`]. A local path that does not exist, or a Hub id that cannot
    be reached, raises an error that says how to fix it.

    Args:
        name_or_path (`str` or `os.PathLike`): Hub id (e.g. `"openai/clip-vit-base-patch32"`), a local folder saved with
            `save_pretrained`, or `"tiny-random"`.
        local_files_only (`bool`, defaults to `False`): never touch the network (as `from_pretrained`).
        revision (`str`, *optional*): Hub revision (branch, tag or commit).
        dtype (`torch.dtype` or `str`, *optional*): dtype to load the weights in (default float32, whatever the
            checkpoint's storage dtype).
        trust_remote_code (`bool`, defaults to `False`): passed to `from_pretrained`; off by default for safety.

    Returns:
        `tuple[CLIPModel, CLIPProcessor]`: the model in eval mode and its processor.
    """
    name = str(name_or_path)
    if name == "tiny-random":
        return tiny_clip()
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or os.path.exists(name)
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise FileNotFoundError(
            f"Model path {name!r} does not exist. Pass a folder written by `save_pretrained` (it holds config.json and "
            "model.safetensors), a Hub id such as 'openai/clip-vit-base-patch32', or 'tiny-random' for a test model."
        )
    name = os.path.expanduser(name)
    kwargs: dict[str, Any] = {"local_files_only": local_files_only, "revision": revision,
                              "trust_remote_code": trust_remote_code}
    try:
        # float32 unless asked otherwise: a checkpoint stored in half precision (like examples/models/world-clip)
        # must not silently train in fp16; mixed precision comes from the Trainer's bf16/fp16 flags instead.
        model = CLIPModel.from_pretrained(name, dtype=dtype or torch.float32, use_safetensors=True, **kwargs)
    except OSError as err:
        raise OSError(
            f"Could not load a CLIP model from {name!r}: {err}\nIf this is a Hub id, check the spelling and your network "
            "(offline, set local_files_only=True and make sure the model is in the HF cache); if it is a folder, it "
            "must contain config.json and model.safetensors."
        ) from err
    try:
        processor = CLIPProcessor.from_pretrained(name, **kwargs)
    except (OSError, ValueError, TypeError):
        # Checkpoints written by older tools may lack a processor: fall back to the packaged CLIP tokenizer and a
        # standard image processor of the model's resolution.
        size = model.config.vision_config.image_size
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
            tokenizer=clip_tokenizer(model.config.text_config.max_position_embeddings),
        )
    model.eval()
    return model, processor
