"""Lightning compatibility (the layer between ``runtime`` and ``callbacks``): the trainer
facade and the LightningModule bridge (so a real LightningModule trains under busloop),
and busloop re-implementations of the Lightning callbacks people use, registered by name on
import, working with Lightning absent.

>>> from compat import Trainer  # Lightning's Trainer front over busloop's Runtime
>>> from compat import EarlyStopping, ModelCheckpoint, LearningRateMonitor, Timer
"""

from compat.adapter import LightningCallbackAdapter
from compat.device_stats_monitor import DeviceStatsMonitor
from compat.early_stopping import EarlyStopping, EarlyStoppingReason
from compat.gpu_stats_monitor import GPUStatsMonitor
from compat.gradient_accumulation import GradientAccumulationScheduler
from compat.lr_monitor import LearningRateMonitor
from compat.model_checkpoint import ModelCheckpoint
from compat.model_pruning import ModelPruning
from compat.module import LightningBridge
from compat.rich_model_summary import RichModelSummary
from compat.swa import StochasticWeightAveraging
from compat.timer import Timer
from compat.trainer import TrainerFacade
from compat.trainer_front import Trainer

__all__ = [
    "DeviceStatsMonitor",
    "EarlyStopping",
    "EarlyStoppingReason",
    "GPUStatsMonitor",
    "GradientAccumulationScheduler",
    "LearningRateMonitor",
    "LightningCallbackAdapter",
    "LightningBridge",
    "ModelCheckpoint",
    "ModelPruning",
    "RichModelSummary",
    "StochasticWeightAveraging",
    "Timer",
    "Trainer",
    "TrainerFacade",
]
