"""Tuner registry: adapter names map to their config class, layer class and functions (peft's `mapping.py` idea).

A tuner folder registers itself at the end of its `__init__.py`, as clip-cl's methods and peft's tuners do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TUNERS", "TunerSpec", "register_tuner", "get_tuner"]


@dataclass(frozen=True)
class TunerSpec:
    """What clip-cl needs to know of an adapter type.

    Attributes:
        name: registry name (`"rkr"`).
        config_cls: the adapter's config dataclass.
        layer_cls: the module that wraps a base layer (has `merge()`, `unmerge()`, `merged`).
        inject: `inject(model, config) -> list[str]`, wraps the target layers in place.
        merge: `merge(model, unload=True) -> model`, writes the adapters into the weights (and removes them).
        state_dict: `state_dict(model) -> dict[str, Tensor]`, only the adapter's tensors.
        load_state_dict: `load_state_dict(model, state_dict) -> list[str]`, the inverse of `state_dict`.
    """

    name: str
    config_cls: type
    layer_cls: type
    inject: Callable
    merge: Callable
    state_dict: Callable
    load_state_dict: Callable


TUNERS: dict[str, TunerSpec] = {}


def register_tuner(name: str, *, config_cls: type, layer_cls: type, inject: Callable, merge: Callable,
                   state_dict: Callable, load_state_dict: Callable) -> None:
    """Register an adapter type under `name` (lower case). Registering a name twice is an error."""
    key = str(name).lower()
    if key in TUNERS and TUNERS[key].layer_cls is not layer_cls:
        raise KeyError(f"A tuner called {key!r} is already registered.")
    TUNERS[key] = TunerSpec(key, config_cls, layer_cls, inject, merge, state_dict, load_state_dict)


def get_tuner(name: str) -> TunerSpec:
    """The tuner registered as `name`, or an error listing the registered ones."""
    key = str(name).lower()
    if key not in TUNERS:
        raise KeyError(f"Unknown tuner {name!r}; registered tuners: {', '.join(sorted(TUNERS)) or 'none'}.")
    return TUNERS[key]
