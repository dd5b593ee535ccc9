"""busloop's native callbacks. Importing this package registers every one by name.

>>> from callbacks import ModelCheckpoint, CALLBACKS
"""

from callbacks.checkpoint import ModelCheckpoint
from callbacks.registry import CALLBACKS, build_callbacks, register, resolve_callback

__all__ = ["CALLBACKS", "ModelCheckpoint", "build_callbacks", "register", "resolve_callback"]
