"""Loading models and processors: real checkpoints of every supported family (CLIP, SigLIP, SigLIP 2) through
`from_pretrained` ([`load_model`]), and tiny random models for tests ([`tiny_model`]).

What differs between families (model classes, processors, the tiny models and their tokenizer fixtures) lives in
`clip_cl.adapters`; the tiny CLIP's names are re-exported here, where existing code imports them from.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .adapters.clip import TINY_CLIP_CONFIG, TOKENIZER_DIR, clip_tokenizer, tiny_clip

__all__ = ["TINY_CLIP_CONFIG", "TOKENIZER_DIR", "TINY_MODEL_NAMES", "clip_tokenizer", "load_clip", "load_model",
           "tiny_clip", "tiny_model"]

#: Names `load_model` accepts for the tiny random test models (one per supported family).
TINY_MODEL_NAMES = ("tiny-random", "tiny-random-siglip", "tiny-random-siglip2")


def tiny_model(name: str, seed: int = 0, **overrides: Any):
    """A tiny random test model by name: `"tiny-random"` (CLIP), `"tiny-random-siglip"`, `"tiny-random-siglip2"`.

    Returns:
        `tuple[model, processor]`: the model in eval mode and its processor (tokenizer fixtures from `clip_cl/assets`).
    """
    from .adapters import ADAPTERS, adapter_for_tiny_name, tag_tokenizer

    adapter = adapter_for_tiny_name(name)
    if adapter is None:
        names = ", ".join(repr(a.tiny_name) for a in ADAPTERS.values() if a.tiny_name)
        raise ValueError(f"Unknown tiny model {name!r}; use one of {names}.")
    model, processor = adapter.tiny(seed, **overrides)
    tag_tokenizer(processor, model)
    return model, processor


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

    from .adapters import tag_tokenizer

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
    tag_tokenizer(processor, model)
    model.eval()
    return model, processor


#: The earlier name of [`load_model`], kept for existing code and configs.
load_clip = load_model
