"""busloop's runtime: the training loop, its event bus, config, checkpoints and trackers.

>>> from runtime import Runtime, Callback
"""

from runtime.bus import Bus, BusError, CallbackError, StopEvent
from runtime.callback import Callback
from runtime.config import Config, ConfigError, load_config
from runtime.devices import seed_everything, select_device
from runtime.events import EVENTS
from runtime.loop import Runtime
from runtime.state import LoopState

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
