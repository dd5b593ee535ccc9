"""The callback adapter: stock and Lightning-style callbacks on busloop's bus.

A Lightning callback's hooks take ``(trainer, pl_module, *args)``; busloop's receivers take
``(runtime, **payload)``. :func:`adapt` (registered in ``runtime.registry.CALLBACK_ADAPTERS``
on import, so the runtime finds it without importing compat) wraps every Lightning-style
callback of a Runtime in a :class:`LightningCallbackAdapter`:

- Only the hooks the callback's class overrides (against Lightning's ``Callback``) become
  receivers: a stock callback with 3 hooks costs 3 receivers, plus one at ``setup`` that binds
  the trainer facade. Each receiver is generated once per callback class and passes the
  payload positionally, as Lightning does (eval batch hooks get ``dataloader_idx`` only while
  the stage runs several loaders, Lightning's rule).
- ``trainer`` is the :class:`compat.trainer.TrainerFacade` (the LightningModule's when the
  model is one, else one made for the Runtime) and ``pl_module`` is ``runtime.model`` (a plain
  ``nn.Module`` seen through :class:`ModuleView`, which adds what stock callbacks read on a
  LightningModule: ``automatic_optimization``, ``device``, ``current_epoch`` ...).
- ``state_dict`` / ``load_state_dict`` / ``state_key`` are the callback's; ``on_save_checkpoint``
  and ``on_load_checkpoint`` are connected to the ``save_checkpoint`` / ``load_checkpoint``
  events, which the runtime emits where Lightning calls them.
- Lightning's order: checkpoint callbacks (``Checkpoint`` subclasses) move after the others,
  and checkpoint / early-stopping callbacks get a ``monitor_role``, so at ``train_epoch_end``
  they run after the LightningModule's own hook (:mod:`compat.module`).
- What busloop cannot give is refused here, at registration, in one line.

A duck-typed callback (any object whose hook methods take ``trainer`` first) is wrapped too;
all its hook methods count as overridden.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from compat.trainer import TrainerFacade
from runtime.errors import ConfigError
from runtime.events import EVENTS
from runtime.registry import CALLBACK_ADAPTERS

if TYPE_CHECKING:
    from runtime.core import RuntimeCore as Runtime

__all__ = ["LightningCallbackAdapter", "ModuleView", "adapt", "facade_for", "hook_name", "is_lightning_callback", "unwrap"]

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")

#: Stock callbacks that need what busloop does not have: class name -> the missing piece.
UNSUPPORTED: dict[str, str] = {
    "BatchSizeFinder": "Lightning's tuner (it re-runs trainer.fit_loop to search a batch size)",
    "LearningRateFinder": "Lightning's tuner (it re-runs trainer.fit_loop to search a learning rate)",
    "ThroughputMonitor": "Lightning's loop objects (trainer._evaluation_loop, trainer.predict_loop)",
}

#: Stock callbacks that need a real LightningModule as ``pl_module``: class name -> why.
NEEDS_LIGHTNING_MODULE: dict[str, str] = {
    "ModelSummary": "it summarizes a LightningModule",
    "RichModelSummary": "it summarizes a LightningModule",
    "GradientAccumulationScheduler": "it checks the module's optimizer_step with is_overridden",
    "StochasticWeightAveraging": "it reads LightningModule attributes",
    "BackboneFinetuning": "it reads LightningModule attributes",
    "WeightAveraging": "it checks the module's configure_model with is_overridden",
}

#: Stock callbacks that need an attribute of the model: class name -> attribute.
NEEDS_MODULE_ATTRIBUTE: dict[str, str] = {"BackboneFinetuning": "backbone", "BasePredictionWriter": "predict_step"}

#: Stock callbacks that log through ``trainer.loggers`` and fail without one.
NEEDS_LOGGER = frozenset({"LearningRateMonitor", "DeviceStatsMonitor"})


def hook_name(event: str) -> str:
    """Lightning's hook for a bus event: ``setup`` / ``teardown``, else ``on_<event>``."""
    return event if event in ("setup", "teardown") else f"on_{event}"


def _lightning_base(callback: object) -> type | None:
    """Lightning's ``Callback`` class when ``callback`` is one (from an imported package)."""
    for package in _PACKAGES:
        pl = sys.modules.get(package)
        if pl is not None and isinstance(callback, pl.Callback):
            return pl.Callback  # type: ignore[no-any-return]
    return None


def _takes_trainer(method: Any) -> bool:
    """Whether a method's first parameter is Lightning's ``trainer``."""
    try:
        params = list(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "trainer"


def is_lightning_callback(callback: object) -> bool:
    """A ``lightning.pytorch`` / ``pytorch_lightning`` Callback, or a duck-typed object whose
    hook methods (``setup``, ``teardown``, ``on_*``) take ``trainer`` first."""
    if isinstance(callback, LightningCallbackAdapter):
        return False
    if _lightning_base(callback) is not None:
        return True
    names = [n for n in dir(type(callback)) if n.startswith("on_") or n in ("setup", "teardown")]
    return any(_takes_trainer(getattr(callback, n)) for n in names if callable(getattr(callback, n, None)))


def _overridden(cls: type, base: type | None, own: tuple[str, ...]) -> list[str]:
    """The bus events whose Lightning hook ``cls`` overrides (all it defines, for a
    duck-typed callback) or the instance sets (``own``, as LambdaCallback does); an ``on_``
    method that is no hook is refused."""
    events = []
    hooks = {hook_name(e): e for e in EVENTS}
    for name in sorted(set(dir(cls)) | set(own)):
        if not (name.startswith("on_") or name in ("setup", "teardown")):
            continue
        if name in own:
            pass
        elif base is not None:
            if getattr(cls, name) is getattr(base, name, None):
                continue
        elif not callable(getattr(cls, name)):
            continue
        if name not in hooks:
            raise ConfigError(
                f"{cls.__name__}: {name} is no Lightning callback hook busloop emits; "
                f"known hooks: {', '.join(sorted(hooks))}"
            )
        events.append(hooks[name])
    return events


def facade_for(runtime: Runtime) -> TrainerFacade:
    """The trainer facade of a run: the LightningModule's (one facade per run, as Lightning
    has one trainer), else one made for this Runtime and kept on it."""
    trainer = getattr(runtime._bridge, "trainer", None)
    if isinstance(trainer, TrainerFacade):
        return trainer
    cached = runtime.__dict__.get("_compat_trainer")
    if cached is None:
        cached = runtime.__dict__["_compat_trainer"] = TrainerFacade(runtime)
    return cached  # type: ignore[no-any-return]


class LightningCallbackAdapter:
    """A Lightning callback as a busloop callback; subclasses are generated per callback class
    (:func:`adapter_class`) with one ``on_<event>`` receiver per overridden hook."""

    monitor_role: str | None = None
    lightning_hooks: tuple[str, ...] = ()

    def __init__(self, callback: Any) -> None:
        self.lightning_callback = callback
        self.trainer: TrainerFacade | None = None
        self.pl_module: Any = None
        for event in self.lightning_hooks:  # bound once: a receiver does one attribute lookup
            self.__dict__[f"_hook_{event}"] = getattr(callback, hook_name(event))

    def __repr__(self) -> str:
        return f"LightningCallbackAdapter({self.lightning_callback!r})"

    @property
    def state_key(self) -> str:
        key = getattr(self.lightning_callback, "state_key", None)
        return key if isinstance(key, str) else type(self.lightning_callback).__qualname__

    def bind(self, runtime: Runtime) -> None:
        """Take the run's trainer facade and module (at every ``setup``: each run has its own)."""
        from compat.module import lightning_base_classes

        self.trainer = facade_for(runtime)
        self.trainer._in_train_batch_end = False
        model = runtime.model
        self.pl_module = model if lightning_base_classes(model) is not None else ModuleView(model, self.trainer)

    def on_setup(self, runtime: Runtime, stage: str) -> None:
        self.bind(runtime)
        if "setup" in self.lightning_hooks:
            self.__dict__["_hook_setup"](self.trainer, self.pl_module, stage)


class ModuleView:
    """``pl_module`` for a plain ``nn.Module``: the LightningModule attributes stock callbacks
    read (``automatic_optimization``, ``device``, ``current_epoch``, ``global_step``,
    ``trainer``, ``example_input_array``) from the run; everything else is the module's own."""

    def __init__(self, module: Any, trainer: TrainerFacade) -> None:
        object.__setattr__(self, "wrapped_module", module)
        object.__setattr__(self, "_trainer", trainer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped_module, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped_module, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped_module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ModuleView({self.wrapped_module!r})"

    @property
    def trainer(self) -> TrainerFacade:
        return self._trainer  # type: ignore[no-any-return]

    @property
    def automatic_optimization(self) -> bool:
        return self._trainer._rt.automatic_optimization  # type: ignore[no-any-return]

    @property
    def device(self) -> Any:
        return self._trainer._rt.device

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch  # type: ignore[no-any-return]

    @property
    def global_step(self) -> int:
        return self._trainer.global_step  # type: ignore[no-any-return]

    @property
    def example_input_array(self) -> Any:
        return getattr(self.wrapped_module, "example_input_array", None)


def _receiver(event: str) -> Callable[..., None]:
    """``on_<event>(self, runtime, <payload>)`` calling the bound hook with Lightning's
    positional arguments; generated so a call builds no dict and inspects nothing."""
    payload = EVENTS[event]
    passed = payload[:-1] if payload[-1:] == ("dataloader_idx",) else payload
    params = "".join(f", {p}" for p in payload)
    args = "".join(f", {p}" for p in passed)
    bind = "    if self.trainer is None:\n        self.bind(runtime)\n" if event == "exception" else ""
    call = f"self._hook_{event}(self.trainer, self.pl_module{args})"
    if event == "train_batch_end":  # the facade counts stepping batches as Lightning does
        # No try/finally (it costs per call): a hook that raises ends the run, and bind()
        # clears the flag at the next run's setup.
        call = (
            "trainer = self.trainer\n    trainer._in_train_batch_end = True\n"
            f"    self._hook_{event}(trainer, self.pl_module{args})\n    trainer._in_train_batch_end = False"
        )
    elif payload[-1:] == ("dataloader_idx",):  # an eval batch: Lightning's logging schedule counts them
        call = (  # across the stage's loaders; dataloader_idx passed only when there are several
            "self.trainer._eval_batches_ready = runtime.state.eval_offset + batch_idx + 1\n"
            f"    if runtime.state.eval_loaders > 1:\n        self._hook_{event}(self.trainer, "
            f"self.pl_module{args}, dataloader_idx)\n    else:\n        {call}"
        )
    source = f"def on_{event}(self, runtime{params}):\n{bind}    {call}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<busloop adapter {event}>", "exec"), namespace)  # noqa: S102
    return namespace[f"on_{event}"]  # type: ignore[no-any-return]


@functools.cache
def adapter_class(cls: type, base: type | None, own: tuple[str, ...] = ()) -> type[LightningCallbackAdapter]:
    """The adapter class for one Lightning callback class and the hooks its instance sets
    itself (named like the class, so errors name it)."""
    events = tuple(_overridden(cls, base, own))
    namespace: dict[str, Any] = {"lightning_hooks": events, "__module__": __name__}
    for event in events:
        if event != "setup":
            namespace[f"on_{event}"] = _receiver(event)
    checkpoint_base = _package_attr(base, "callbacks", "Checkpoint")
    stopping_base = _package_attr(base, "callbacks", "EarlyStopping")
    if checkpoint_base is not None and issubclass(cls, checkpoint_base):
        namespace["monitor_role"] = "checkpoint"
    elif stopping_base is not None and issubclass(cls, stopping_base):
        namespace["monitor_role"] = "early_stopping"
    if base is None or getattr(cls, "state_dict", None) is not getattr(base, "state_dict", None):
        if callable(getattr(cls, "state_dict", None)):
            namespace["state_dict"] = lambda self: self.lightning_callback.state_dict()
            namespace["load_state_dict"] = lambda self, sd: self.lightning_callback.load_state_dict(sd)
    return type(cls.__name__, (LightningCallbackAdapter,), namespace)


def _package_attr(base: type | None, module: str, name: str) -> Any:
    if base is None:
        return None
    package = base.__module__.split(".callbacks")[0]
    return getattr(sys.modules.get(f"{package}.{module}"), name, None)


def _check(callback: object, runtime: Runtime) -> None:
    """Refuse, in one line, a stock callback that needs what this run cannot give."""
    name = type(callback).__name__
    classes = {c.__name__ for c in type(callback).__mro__}
    for missing, why in UNSUPPORTED.items():
        if missing in classes:
            raise ConfigError(f"{name}: needs {why}, which busloop does not have")
    from compat.module import lightning_base_classes

    if lightning_base_classes(runtime.model) is None:
        for needy, why in NEEDS_LIGHTNING_MODULE.items():
            if needy in classes:
                raise ConfigError(
                    f"{name}: needs a LightningModule as pl_module ({why}); "
                    f"{type(runtime.model).__name__} is a plain nn.Module"
                )
    for needy, attribute in NEEDS_MODULE_ATTRIBUTE.items():
        if needy in classes and not hasattr(runtime.model, attribute):
            raise ConfigError(f"{name}: needs pl_module.{attribute}, which {type(runtime.model).__name__} does not have")
    # Under compat.Trainer the stock callback raises Lightning's own error when the run starts,
    # as under Lightning's Trainer; a bare Runtime (CLI, config) learns it here, before training.
    from compat.trainer_run import FrontRuntime

    front = isinstance(runtime, FrontRuntime)
    if classes & NEEDS_LOGGER and not front and runtime.tracker is not None and not facade_loggers(runtime):
        raise ConfigError(
            f"{name}: needs a logger (trainer.loggers), but the Runtime's tracker "
            f"{type(runtime.tracker).__name__} logs nothing; give it a real tracker"
        )


def facade_loggers(runtime: Runtime) -> bool:
    """Whether the Runtime's tracker gives the facade a logger."""
    from compat.trainer_parts import tracker_logs

    return tracker_logs(runtime.tracker)


def unwrap(callback: object) -> Any:
    """The Lightning callback inside an adapter, else the callback itself."""
    return callback.lightning_callback if isinstance(callback, LightningCallbackAdapter) else callback


def adapt(callbacks: list[object], runtime: Runtime) -> list[object]:
    """Wrap the Lightning-style callbacks of ``callbacks`` and move checkpoint ones last
    (as Lightning's trainer reorders them); other callbacks keep their place."""
    if not any(is_lightning_callback(c) for c in callbacks):
        return callbacks
    adapted: list[object] = []
    for callback in callbacks:
        if is_lightning_callback(callback):
            _check(callback, runtime)
            own = tuple(sorted(
                n for n, v in vars(callback).items()
                if (n.startswith("on_") or n in ("setup", "teardown")) and callable(v)
            ))  # fmt: skip
            cls: Any = type(callback)
            adapted.append(adapter_class(cls, _lightning_base(callback), own)(callback))
        else:
            adapted.append(callback)

    def moved(c: object) -> bool:
        return isinstance(c, LightningCallbackAdapter) and c.monitor_role == "checkpoint"

    return [c for c in adapted if not moved(c)] + [c for c in adapted if moved(c)]


CALLBACK_ADAPTERS.append(adapt)
