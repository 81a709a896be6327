"""Method registry: `method:` names in YAML files map to a (config class, trainer class) pair.

Each method's folder registers itself in its `__init__.py` (peft's pattern); adding a method touches its own folder
plus one name in `BUILTIN_METHODS`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

__all__ = ["BUILTIN_METHODS", "MethodSpec", "register_method", "get_method", "list_methods"]

# Folder names under clip_cl/methods, imported on first look-up.
BUILTIN_METHODS = ["ft", "original", "joint_ft", "lwf", "geodl", "imm", "rkr", "vr_lwf", "wise_ft", "zscl", "lora", "er",
                   "agem", "gem"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    trainer_cls: type | None  # None: evaluation only (Original CLIP)
    description: str = ""


_REGISTRY: dict[str, MethodSpec] = {}
_loaded = False


def register_method(name: str, config_cls: type, trainer_cls: type | None, description: str = "") -> None:
    """Register a method under `name` (lower-case, as written in YAML)."""
    _REGISTRY[name] = MethodSpec(name, config_cls, trainer_cls, description)
    config_cls._method = name


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_METHODS:
        try:
            importlib.import_module(f"clip_cl.methods.{name}")
        except ModuleNotFoundError as err:
            # A method folder not written yet (or an optional dependency such as peft missing) must not break the
            # others; only a missing *folder* is tolerated, a broken import inside a method still raises.
            if err.name not in (f"clip_cl.methods.{name}", "peft"):
                raise


def list_methods() -> dict[str, MethodSpec]:
    """All registered methods by name."""
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> MethodSpec:
    """The method registered as `name`, or an error listing the valid names and the closest one."""
    methods = list_methods()
    key = str(name).lower().replace("-", "_")
    if key not in methods:
        close = difflib.get_close_matches(key, methods, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown method {name!r}. Valid methods: {', '.join(methods)}.{hint}")
    return methods[key]
