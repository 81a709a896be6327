"""The errors a user of clip-cl can fix: a bad path, a bad value, an unknown key, a corrupt image, a failed push.

They are raised where the problem is detected, with a message that names the problem and the fix. The command line
(`clip_cl.cli.command`) prints them as one `error: ...` line and exits with status 2, without a traceback (set
`CLIP_CL_DEBUG=1` or pass `--debug` to see it); library callers catch them by type. Every class also derives from
the built-in type that code written before it caught (`ValueError`, `OSError`, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserError", "ConfigError", "DataError", "ModelLoadError", "NonFiniteLossError", "HubPushError",
           "user_input"]


class UserError(Exception):
    """A problem with what the user asked for; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration problem: unknown key or option, bad value, unreadable config file."""


class DataError(UserError, ValueError):
    """A dataset that cannot be used as given: missing path, wrong columns, too many sessions for its classes."""


class ModelLoadError(UserError, OSError):
    """`model_name_or_path` names no folder or model that can be loaded."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; the run stopped before the update, everything saved so far is intact."""


class HubPushError(UserError, RuntimeError):
    """Pushing a finished run to the Hub failed (offline, no token, network, permissions); the run itself is saved."""


@contextmanager
def user_input(kind: type[UserError] = DataError,
               types: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)
               ) -> Iterator[None]:
    """Treat the errors of the enclosed block as the user's: the block reads what the user pointed to (dataset
    specs, a model path), whose validators raise built-in errors with messages that already name the fix.

    Args:
        kind (`type[UserError]`, defaults to [`DataError`]): the error raised instead.
        types (`tuple`): the built-in errors converted; anything else (a bug) keeps its type and traceback.
    """
    try:
        yield
    except UserError:
        raise
    except types as err:
        raise kind(str(err)) from err
