"""Lightning compatibility (the layer between ``runtime`` and ``callbacks``): busloop
re-implementations of the Lightning callbacks people use, registered by name on import,
working with Lightning absent. The trainer facade and the stock-callback adapter land here.

>>> from compat import ModelCheckpoint, GradientAccumulationScheduler
"""

from compat.gradient_accumulation import GradientAccumulationScheduler
from compat.model_checkpoint import ModelCheckpoint

__all__ = ["GradientAccumulationScheduler", "ModelCheckpoint"]
