"""``ConfigError``: a mistake in what the user wrote (a config, an override, a name).

It lives on its own so that ``runtime.config`` and ``runtime.names`` can both raise it
without importing each other; ``runtime.config`` and ``runtime`` re-export it, and that is
where callers import it from.
"""

from collections.abc import Sequence

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A mistake in a configuration; ``problems`` holds one ``key.path: problem`` line each."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(self.problems))
