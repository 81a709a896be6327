"""One folder per continual-learning method: `config.py` (a `CLIPCLConfig` subclass) and `trainer.py`."""

from .registry import BUILTIN_METHODS, MethodSpec, get_method, list_methods, register_method

__all__ = ["BUILTIN_METHODS", "MethodSpec", "get_method", "list_methods", "register_method"]
