"""Names a user wrote: the nearest-name suggestion for a misspelling, and import paths.

``suggest`` turns a wrong name into ``"; did you mean 'x'?"`` for an error message (config
keys, event names, callbacks, parameters). ``resolve_import`` imports the object that an
import path in a config names (``"pkg.mod:attr"``), and says in a ``ConfigError`` which key
was wrong and what the nearest existing module or attribute is.

This module imports only ``runtime.errors``, so anything (the bus, the config, callbacks)
can use it without pulling in the config machinery.
"""

import difflib
import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

from runtime.errors import ConfigError

__all__ = ["resolve_import", "suggest"]


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest of ``choices`` to ``name``, else ``""``."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _missing_module(name: str, error: ModuleNotFoundError) -> bool:
    """True when ``error`` says ``name`` itself (or a parent package) does not exist."""
    return error.name is not None and (name == error.name or name.startswith(error.name + "."))


def _module_hint(missing: str) -> str:
    parent, _, leaf = missing.rpartition(".")
    if not parent:
        return ""
    try:
        package = importlib.import_module(parent)
    except Exception:
        return ""
    names = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
    return suggest(leaf, names + [n for n in dir(package) if not n.startswith("_")])


def resolve_import(path: str, *, key: str) -> Any:
    """Import ``"pkg.mod:attr"``, ``"pkg.mod:Outer.inner"`` or ``"pkg.mod.attr"``.

    ``key`` is the config key path that named it; every failure raises ``ConfigError``.
    """
    module_name, sep, attr_path = path.partition(":") if isinstance(path, str) else ("", "", "")
    names = module_name.split(".") + (attr_path.split(".") if sep else [])
    if not all(names):
        raise ConfigError(
            f"{key}: expected an import path like 'package.module:name', got {path!r}"
        )
    candidates = [module_name] if sep else [
        ".".join(module_name.split(".")[:i]) for i in range(module_name.count(".") + 1, 0, -1)
    ]  # fmt: skip
    missing = module_name
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if not _missing_module(candidate, exc):
                raise ConfigError(f"{key}: importing '{candidate}' failed: {exc}") from exc
            missing = exc.name or candidate
            continue
        except Exception as exc:
            raise ConfigError(
                f"{key}: importing '{candidate}' failed: {type(exc).__name__}: {exc}"
            ) from exc
        rest = attr_path if sep else path[len(candidate) + 1 :]
        break
    else:
        raise ConfigError(
            f"{key}: cannot import {path!r}: no module named '{missing}'{_module_hint(missing)}"
        )
    obj, owner = module, candidate
    for part in rest.split(".") if rest else []:
        if not hasattr(obj, part):
            hint = suggest(part, [n for n in dir(obj) if not n.startswith("_")])
            raise ConfigError(f"{key}: '{owner}' has no attribute '{part}'{hint}")
        obj, owner = getattr(obj, part), f"{owner}.{part}"
    return obj
