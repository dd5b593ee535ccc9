"""busloop's native callbacks. Importing this package registers every one by name.

>>> from callbacks import ModelCheckpoint, CALLBACKS
"""

from callbacks.registry import CALLBACKS, build_callbacks, register, resolve_callback
from callbacks.checkpoint import ModelCheckpoint  # noqa: I001  (registers itself)

__all__ = ["CALLBACKS", "ModelCheckpoint", "build_callbacks", "register", "resolve_callback"]
