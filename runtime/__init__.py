"""busloop's runtime: the training loop, its event bus, config, checkpoints and trackers.

>>> from runtime import Runtime, Callback

The names below are loaded on first use (PEP 562 ``__getattr__``): importing a submodule
such as ``runtime.cli`` then does not import torch, so ``busloop --help`` starts in a
fraction of a second; ``from runtime import Runtime`` imports the loop (and torch) as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.bus import Bus, BusError, CallbackError, StopEvent
    from runtime.callback import Callback
    from runtime.config import Config, ConfigError, load_config
    from runtime.devices import seed_everything, select_device
    from runtime.events import EVENTS
    from runtime.loop import Runtime
    from runtime.state import LoopState

#: Public name -> the submodule that defines it.
_HOMES = {
    "EVENTS": "runtime.events",
    "Bus": "runtime.bus",
    "BusError": "runtime.bus",
    "Callback": "runtime.callback",
    "CallbackError": "runtime.bus",
    "Config": "runtime.config",
    "ConfigError": "runtime.config",
    "LoopState": "runtime.state",
    "Runtime": "runtime.loop",
    "StopEvent": "runtime.bus",
    "load_config": "runtime.config",
    "seed_everything": "runtime.devices",
    "select_device": "runtime.devices",
}

__all__ = [
    "EVENTS",
    "Bus",
    "BusError",
    "Callback",
    "CallbackError",
    "Config",
    "ConfigError",
    "LoopState",
    "Runtime",
    "StopEvent",
    "load_config",
    "seed_everything",
    "select_device",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its submodule on first use, then keep it in the package."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
