"""``busloop`` command line: train, test, export, archive, list callbacks, benchmark.

The composition root: the one module that wires busloop's packages together. The layers
import one way, ``runtime`` <- ``compat`` (the Lightning layer) <- ``callbacks`` (the luxonis
layer); this module alone imports all of them and ``benchmarks`` (lazily, per command, so
``busloop --help`` stays quick). It builds the job from the config factories, the callbacks
from ``callbacks.build_callbacks`` and hands both to :class:`runtime.Runtime`.

User mistakes (config, checkpoint, callback registration, an error inside a user's factory)
exit with code 2 and one line; ``--debug`` shows the traceback. The whole job is checked
(:func:`runtime.job.check_job`) before the data and the model are built, and everything that
can fail on the user's input fails before a run folder exists. A run that fails inside a
callback or step exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import shlex
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from runtime.bus import BusError, CallbackError
from runtime.config import Config, ConfigError, load_config

log = logging.getLogger("busloop")

#: User mistakes from modules that load without torch; :func:`_user_errors` adds the rest.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, BusError)

#: Modules (loaded lazily, with torch) whose error class is a user mistake: module -> class.
LAZY_USER_ERRORS = {
    "runtime.checkpoint": "CheckpointError",
    "runtime.optim": "OptimizationError",
    "callbacks.archive.tarball": "ArchiveError",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus the errors of the lazily loaded modules that a command loaded.

    A module that was never imported cannot have raised, so ``busloop --help`` needs
    neither torch nor the checkpoint and optimizer code.
    """
    errors = USER_ERRORS
    for module_name, class_name in LAZY_USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            errors += (getattr(module, class_name),)
    return errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busloop", description="busloop: a PyTorch training runtime on an event bus."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (the embedded digits job without CONFIG)")
    train.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    train.add_argument("--resume", metavar="CKPT", help="resume from a checkpoint (resume.ckpt)")

    test = commands.add_parser("test", help="test a trained model")
    test.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    test.add_argument("--weights", metavar="CKPT", required=True, help="checkpoint to load")
    test.add_argument("--view", choices=("train", "val", "test"), default="test")

    export = commands.add_parser("export", help="export a checkpoint to ONNX, verified by onnxruntime")
    export.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    export.add_argument("--weights", metavar="CKPT", required=True, help="checkpoint to export")

    archive = commands.add_parser("archive", help="NN Archive: create, inspect, extract")
    actions = archive.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="export a checkpoint and pack its NN Archive")
    create.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    create.add_argument("--weights", metavar="CKPT", required=True, help="checkpoint to archive")
    inspect_ = actions.add_parser("inspect", help="print an archive's config.json (validated)")
    inspect_.add_argument("archive", metavar="ARCHIVE")
    extract = actions.add_parser("extract", help="extract safely (never outside DIR)")
    extract.add_argument("archive", metavar="ARCHIVE")
    extract.add_argument("dest", metavar="DIR")

    cbs = commands.add_parser("callbacks", help="the resolved callbacks and their events")
    cbs.add_argument("args", nargs="*", metavar="[key=value ...]")
    cbs.add_argument("--config", metavar="CONFIG")

    bench = commands.add_parser("bench", help="run the hook-overhead benchmark suite")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    for sub in (train, test, export, archive, create, inspect_, extract, cbs, bench):
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


def _split(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] key=value ...`` -> (config path or None, overrides)."""
    config = None
    overrides = []
    for arg in args:
        if "=" in arg:
            overrides.append(arg)
        elif config is None:
            config = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}: give one CONFIG and key=value overrides")
    return config, overrides


def _load(config: str | None, overrides: Sequence[str]) -> Config:
    if config is None:
        from runtime.examples import DEFAULT_CONFIG

        config = str(DEFAULT_CONFIG)
    return load_config(config, overrides)


def _setup_logging(cfg: Config | None = None) -> None:
    logger = logging.getLogger("busloop")
    logger.setLevel(logging.INFO)
    if any(getattr(h, "_busloop_console", False) for h in logger.handlers):
        return
    handler: logging.Handler
    if (cfg is None or cfg.trainer.rich_logging) and sys.stderr.isatty():
        from rich import get_console
        from rich.logging import RichHandler

        # rich's global console: the live progress bars draw on it too (callbacks.progress),
        # so records are printed above a live bar, not onto its line
        handler = RichHandler(console=get_console(), show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    setattr(handler, "_busloop_console", True)  # noqa: B010  (marks our own handler)
    logger.addHandler(handler)


@contextlib.contextmanager
def _held_logs() -> Iterator[None]:
    """Hold busloop's log records while the job is checked and built, and show them only
    when that passed: a mistake found there is then the one line the user sees, not the
    last line after "Added X callback"."""
    logger = logging.getLogger("busloop")
    consoles = [h for h in logger.handlers if getattr(h, "_busloop_console", False)]
    held = logging.handlers.BufferingHandler(capacity=1 << 16)
    for handler in consoles:
        logger.removeHandler(handler)
    logger.addHandler(held)
    try:
        yield
    except _user_errors():
        held.buffer.clear()
        raise
    finally:
        logger.removeHandler(held)
        for handler in consoles:
            logger.addHandler(handler)
            for record in held.buffer:
                if record.levelno >= handler.level:
                    handler.handle(record)


def _prepare(
    cfg: Config, checkpoint: str | None, *, resume: bool = False, callbacks: bool = True
) -> tuple[Any, dict[str, Any], list[object]]:
    """Check the whole job, then build it: ``(model, loaders, callbacks)``.

    The config (loss, optimizer, scheduler, tracker backends, factories, callbacks) and the
    checkpoint are checked before the data and the model are built (after seeding, when
    ``trainer.seed`` is set), and the checkpoint's weights are loaded into the model before
    any run folder exists: one code path for ``--resume``, ``trainer.resume_from`` and
    ``--weights``.
    """
    from runtime.devices import seed_everything
    from runtime.job import build_job, check_job
    from runtime.resume import load_weights

    with _held_logs():
        loaded = check_job(cfg, checkpoint, resume=resume)
        built: list[object] = []
        if callbacks:
            from callbacks import build_callbacks

            built = build_callbacks(cfg)
        if cfg.trainer.seed is not None:
            seed_everything(cfg.trainer.seed, deterministic=cfg.trainer.deterministic)
        model, loaders = build_job(cfg)
        if loaded is not None:
            load_weights(model, loaded, str(checkpoint))
    return model, loaders, built


def cmd_train(ns: argparse.Namespace) -> int:
    from runtime.loop import Runtime

    config, overrides = _split(ns.args)
    cfg = _load(config, overrides)
    _setup_logging(cfg)
    model, loaders, callbacks = _prepare(cfg, ns.resume or cfg.trainer.resume_from, resume=True)
    rt = Runtime(model, callbacks, cfg)
    rt.loaders.update(loaders)
    try:
        state = rt.fit(loaders["train"], loaders.get("val"), ckpt_path=ns.resume)
    except BaseException:
        rt.close("failed")
        raise
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(state.metrics.items()))
    if state.interrupted:  # epochs as the console counts them: 1-based, "Epoch 3/12"
        log.info("Training interrupted in epoch %d/%d (%d steps): %s", min(state.epoch + 1, state.max_epochs), state.max_epochs,
                 state.global_step, summary)
    else:
        log.info("Training finished after %d epochs (%d steps): %s", state.epoch, state.global_step, summary)
    if rt.run_dir is not None:
        log.info("Run folder: %s", rt.run_dir)
    rt.close("interrupted" if state.interrupted else "success")
    if state.interrupted:
        # GracefulInterruptCallback sets resume_path when it wrote the checkpoint
        resume = next((p for p in (getattr(c, "resume_path", None) for c in rt.callbacks) if p), None)
        if resume is None:
            log.warning("Interrupted; no resume checkpoint was written (see the errors above)")
            return 130
        kept = [o for o in overrides if not o.startswith("trainer.resume_from=")]
        command = ["busloop", "train", *([config] if config else []), *kept, "--resume", str(resume)]
        log.warning("Interrupted; resume with: %s", shlex.join(command))
        return 130
    return 0


def cmd_test(ns: argparse.Namespace) -> int:
    from runtime.loop import Runtime

    config, overrides = _split(ns.args)
    cfg = _load(config, overrides)
    _setup_logging(cfg)
    model, loaders, callbacks = _prepare(cfg, ns.weights)
    if ns.view not in loaders:
        raise ConfigError(f"--view {ns.view}: the data factory returned no {ns.view!r} loader")
    rt = Runtime(model, callbacks, cfg)
    metrics = rt.test(loaders[ns.view])
    rt.close()
    for name, value in sorted(metrics.items()):
        log.info("%s = %.5f", name, value)
    return 0


def _trained_runtime(ns: argparse.Namespace) -> Any:
    """A Runtime (no callbacks, a new run folder) holding the model with ``--weights``."""
    from runtime.config import config_to_dict
    from runtime.loop import Runtime
    from runtime.tracking import create_tracker

    config, overrides = _split(ns.args)
    cfg = _load(config, overrides)
    _setup_logging(cfg)
    model, loaders, _ = _prepare(cfg, ns.weights, callbacks=False)
    tcfg = cfg.tracker
    tracker = create_tracker(tcfg.save_directory, tcfg.run_name, tcfg.backends)
    tracker.save_config(config_to_dict(cfg))
    rt = Runtime(model, [], cfg, tracker=tracker)
    rt.loaders.update(loaders)
    return rt


def _export(rt: Any) -> Any:
    """Export and verify; the result, or None with the reason printed."""
    from callbacks.export import ExportOnTrainEnd
    from callbacks.onnx_tools import ExportError

    try:
        result = ExportOnTrainEnd().export(rt, load_best=False)
    except ExportError as exc:
        sys.stderr.write(f"busloop: export failed: {exc}\n")
        return None
    if result is None:  # only when asked to load a best checkpoint, which this is not
        return None
    if not result.passed:
        sys.stderr.write(
            f"busloop: export failed verification: onnxruntime differs from PyTorch by up to "
            f"{result.max_abs_diff:.3g} > exporter.tolerance {result.tolerance:.3g}; "
            f"the file is kept for inspection: {result.path}\n"
        )
        return None
    sys.stdout.write(f"{result.path}  (max abs diff vs PyTorch {result.max_abs_diff:.3g})\n")
    return result


def cmd_export(ns: argparse.Namespace) -> int:
    rt = _trained_runtime(ns)
    result = _export(rt)
    rt.close("success" if result is not None else "failed")
    return 0 if result is not None else 1


def cmd_archive(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from callbacks.archive import archive_export, read_config, safe_extract

    if ns.action == "inspect":
        config = read_config(Path(ns.archive))
        sys.stdout.write(json.dumps(config.to_dict(), indent=4) + "\n")
        return 0
    if ns.action == "extract":
        paths = safe_extract(Path(ns.archive), Path(ns.dest))
        sys.stdout.write(f"extracted {len(paths)} file(s) into {ns.dest}\n")
        return 0
    rt = _trained_runtime(ns)
    result = _export(rt)
    if result is not None:
        path, _ = archive_export(rt, result)
        sys.stdout.write(f"{path}\n")
    rt.close("success" if result is not None else "failed")
    return 0 if result is not None else 1


def cmd_callbacks(ns: argparse.Namespace) -> int:
    from callbacks import build_callbacks
    from runtime.bus import Bus

    cfg = load_config(ns.config, ns.args) if ns.config else _load(None, ns.args)
    callbacks = build_callbacks(cfg)
    bus = Bus()
    lines = []
    for index, callback in enumerate(callbacks):
        order = list(bus.signals)
        events = sorted(bus.subscribe(callback), key=order.index)
        role = getattr(callback, "monitor_role", None)
        note = " [monitoring: runs after a LightningModule's on_train_epoch_end]" if role else ""
        lines.append(f"{index + 1:>2}. {_described(callback)}: {', '.join(events) or '(no events)'}{note}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _described(callback: object) -> str:
    """The class name, with what it monitors when it monitors something (two ModelCheckpoints
    of the default set differ only there)."""
    monitor = getattr(callback, "monitor", None)
    if not isinstance(monitor, str):
        return type(callback).__name__
    mode = getattr(callback, "mode", None)
    return f"{type(callback).__name__}(monitor={monitor}{f', mode={mode}' if isinstance(mode, str) else ''})"


def cmd_bench(ns: argparse.Namespace) -> int:
    from benchmarks.__main__ import main as bench_main

    return int(bench_main(ns.rest) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # the suite parses its own options, in their given order
        return cmd_bench(argparse.Namespace(rest=args[1:], debug=False))
    parser = _parser()
    ns, extra = parser.parse_known_args(args)
    if ns.command == "bench":
        ns.rest = [*ns.rest, *extra]
    elif extra:  # key=value overrides given after an option (argparse stops at options)
        unknown = [arg for arg in extra if "=" not in arg or arg.startswith("-")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        ns.args = [*ns.args, *extra]
    commands = {
        "train": cmd_train, "test": cmd_test, "export": cmd_export, "archive": cmd_archive,
        "callbacks": cmd_callbacks, "bench": cmd_bench,
    }  # fmt: skip
    try:
        return commands[ns.command](ns)
    except _user_errors() as exc:
        if ns.debug:
            traceback.print_exc()
        sys.stderr.write(f"busloop: error: {exc}\n")
        return 2
    except CallbackError as exc:
        if ns.debug:
            traceback.print_exc()
        sys.stderr.write(f"busloop: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("busloop: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
