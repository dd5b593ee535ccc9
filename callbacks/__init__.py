"""busloop's native callbacks. Importing this package registers every one by name.

>>> from callbacks import EMACallback, ModelCheckpoint, CALLBACKS
"""

from callbacks.checkpoint import ModelCheckpoint
from callbacks.ema import EMACallback
from callbacks.fail_on_no_batches import FailOnNoTrainBatches
from callbacks.grad_accumulation import GradientAccumulationScheduler
from callbacks.interrupt import GracefulInterruptCallback
from callbacks.metadata import MetadataLogger
from callbacks.progress import LuxonisRichProgressBar, LuxonisTQDMProgressBar
from callbacks.registry import CALLBACKS, build_callbacks, register, resolve_callback
from callbacks.summary import LuxonisModelSummary
from callbacks.test_on_train_end import TestOnTrainEnd
from callbacks.training_manager import TrainingManager
from callbacks.training_progress import TrainingProgressCallback
from callbacks.upload import UploadCheckpoint

__all__ = [
    "CALLBACKS",
    "EMACallback",
    "FailOnNoTrainBatches",
    "GracefulInterruptCallback",
    "GradientAccumulationScheduler",
    "LuxonisModelSummary",
    "LuxonisRichProgressBar",
    "LuxonisTQDMProgressBar",
    "MetadataLogger",
    "ModelCheckpoint",
    "TestOnTrainEnd",
    "TrainingManager",
    "TrainingProgressCallback",
    "UploadCheckpoint",
    "build_callbacks",
    "register",
    "resolve_callback",
]
