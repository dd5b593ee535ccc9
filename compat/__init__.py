"""Lightning compatibility (the layer between ``runtime`` and ``callbacks``): the trainer
facade and the LightningModule bridge (so a real LightningModule trains under busloop),
and busloop re-implementations of the Lightning callbacks people use, registered by name on
import, working with Lightning absent.

>>> from compat import EarlyStopping, ModelCheckpoint, LearningRateMonitor, Timer
"""

from compat.early_stopping import EarlyStopping, EarlyStoppingReason
from compat.gradient_accumulation import GradientAccumulationScheduler
from compat.lr_monitor import LearningRateMonitor
from compat.model_checkpoint import ModelCheckpoint
from compat.module import LightningBridge
from compat.timer import Timer
from compat.trainer import TrainerFacade

__all__ = [
    "EarlyStopping",
    "EarlyStoppingReason",
    "GradientAccumulationScheduler",
    "LearningRateMonitor",
    "LightningBridge",
    "ModelCheckpoint",
    "Timer",
    "TrainerFacade",
]
