"""busloop's native callbacks (the luxonis layer). Importing this package registers every
one by name in :mod:`runtime.registry`; :func:`build_callbacks` gives a config run's set.

>>> from callbacks import EMACallback, ModelCheckpoint, CALLBACKS
"""

from callbacks.archive import ArchiveOnTrainEnd
from callbacks.convert import ConvertOnTrainEnd
from callbacks.defaults import build_callbacks
from callbacks.ema import EMACallback
from callbacks.export import ExportOnTrainEnd
from callbacks.fail_on_no_batches import FailOnNoTrainBatches
from callbacks.gradcam import GradCamCallback
from callbacks.interrupt import GracefulInterruptCallback
from callbacks.metadata import MetadataLogger
from callbacks.progress import LuxonisRichProgressBar, LuxonisTQDMProgressBar
from callbacks.summary import LuxonisModelSummary
from callbacks.test_on_train_end import TestOnTrainEnd
from callbacks.training_manager import TrainingManager
from callbacks.training_progress import TrainingProgressCallback
from callbacks.upload import UploadCheckpoint
from compat.gradient_accumulation import GradientAccumulationScheduler
from compat.model_checkpoint import ModelCheckpoint
from runtime.registry import CALLBACKS, register, resolve_callback

__all__ = [
    "CALLBACKS",
    "ArchiveOnTrainEnd",
    "ConvertOnTrainEnd",
    "EMACallback",
    "ExportOnTrainEnd",
    "FailOnNoTrainBatches",
    "GracefulInterruptCallback",
    "GradCamCallback",
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
