"""Loading models and processors: real checkpoints of every supported family (CLIP, SigLIP, SigLIP 2) through
`from_pretrained` ([`load_model`]), and tiny random models for tests ([`tiny_model`]).

The family-specific parts (which model class, which processor) come from `clip_cl.adapters`; this module keeps the
tiny CLIP (`tiny_clip`), whose tiny SigLIP siblings live in `clip_cl.adapters.siglip`.

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

try:  # without torchvision, transformers 5 serves the PIL back-end; ask for it directly to avoid a warning
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - older transformers
    from transformers import CLIPImageProcessor

__all__ = ["TINY_CLIP_CONFIG", "TOKENIZER_DIR", "TINY_MODEL_NAMES", "clip_tokenizer", "load_clip", "load_model",
           "tiny_clip", "tiny_model"]

#: Names `load_model` accepts for the tiny random test models (one per supported family).
TINY_MODEL_NAMES = ("tiny-random", "tiny-random-siglip", "tiny-random-siglip2")

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


def tiny_model(name: str, seed: int = 0, **overrides: Any):
    """A tiny random test model by name: `"tiny-random"` (CLIP), `"tiny-random-siglip"`, `"tiny-random-siglip2"`.

    Returns:
        `tuple[model, processor]`: the model in eval mode and its processor (tokenizer fixtures from `clip_cl/assets`).
    """
    from .adapters import ADAPTERS, adapter_for_tiny_name

    adapter = adapter_for_tiny_name(name)
    if adapter is None:
        names = ", ".join(repr(a.tiny_name) for a in ADAPTERS.values() if a.tiny_name)
        raise ValueError(f"Unknown tiny model {name!r}; use one of {names}.")
    return adapter.tiny(seed, **overrides)


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or os.path.exists(name)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    local_files_only: bool = False,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
):
    """Load a supported model (CLIP, SigLIP, SigLIP 2) and its processor from a Hub id or a local folder.

    The family comes from the checkpoint's `config.json` (`model_type`); an unsupported one raises an error naming
    the supported families. The names `"tiny-random"`, `"tiny-random-siglip"` and `"tiny-random-siglip2"` return
    the tiny random test models ([`tiny_model`]). A local path that does not exist, or a Hub id that cannot be
    reached, raises an error that says how to fix it.

    Args:
        name_or_path (`str` or `os.PathLike`): Hub id (e.g. `"openai/clip-vit-base-patch32"`,
            `"google/siglip-base-patch16-224"`), a folder saved with `save_pretrained`, or a tiny model's name.
        local_files_only (`bool`, defaults to `False`): never touch the network (as `from_pretrained`).
        revision (`str`, *optional*): Hub revision (branch, tag or commit).
        dtype (`torch.dtype` or `str`, *optional*): dtype to load the weights in (default float32, whatever the
            checkpoint's storage dtype).
        trust_remote_code (`bool`, defaults to `False`): passed to `from_pretrained`; off by default for safety.

    Returns:
        `tuple[model, processor]`: the model in eval mode and its processor.
    """
    from transformers import AutoConfig

    from .adapters import adapter_for_model_type, adapter_for_tiny_name

    name = str(name_or_path)
    if adapter_for_tiny_name(name) is not None:
        return tiny_model(name)
    if _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        raise FileNotFoundError(
            f"Model path {name!r} does not exist. Pass a folder written by `save_pretrained` (it holds config.json and "
            "model.safetensors), a Hub id such as 'openai/clip-vit-base-patch32', or 'tiny-random' "
            "('tiny-random-siglip', 'tiny-random-siglip2') for a test model."
        )
    name = os.path.expanduser(name)
    kwargs: dict[str, Any] = {"local_files_only": local_files_only, "revision": revision,
                              "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Could not load a model config from {name!r}: {err}\nIf this is a Hub id, check the spelling and your "
            "network (offline, set local_files_only=True and make sure the model is in the HF cache); if it is a "
            "folder, it must contain config.json and model.safetensors."
        ) from err
    adapter = adapter_for_model_type(config.model_type)
    return _load_family(adapter, name, dtype=dtype, **kwargs)


def _load_family(adapter, name: str, *, dtype=None, **kwargs: Any):
    """Model and processor of a known family (see [`load_model`])."""
    from transformers import AutoProcessor

    try:
        # float32 unless asked otherwise: a checkpoint stored in half precision (like examples/models/world-clip)
        # must not silently train in fp16; mixed precision comes from the Trainer's bf16/fp16 flags instead.
        model = adapter.model_class.from_pretrained(name, dtype=dtype or torch.float32, use_safetensors=True,
                                                    **kwargs)
    except OSError as err:
        raise OSError(
            f"Could not load a {adapter.model_class.__name__} from {name!r}: {err}\nIf this is a Hub id, check the "
            "spelling and your network (offline, set local_files_only=True and make sure the model is in the HF "
            "cache); if it is a folder, it must contain config.json and model.safetensors."
        ) from err
    try:
        processor = AutoProcessor.from_pretrained(name, **kwargs)
        if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ValueError("incomplete processor")
    except (OSError, ValueError, TypeError, KeyError):
        # Checkpoints written by older tools may lack a processor: fall back to the packaged tokenizer of the family
        # and a standard image processor of the model's resolution.
        processor = adapter.processor_for(model)
    model.eval()
    return model, processor


#: The earlier name of [`load_model`], kept for existing code and configs.
load_clip = load_model
