"""A registry of plug-ins: name -> the one object of each registered class.

Pipelines, trackers and export formats are each a class that registers itself with a class
decorator beside its definition (as timm registers models), so adding one is one new class and
one registration, and every command asks the registry instead of comparing names.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """``{name: instance}``, filled by ``register``; ``kind`` names the plug-ins in errors ("tracker")."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, plugin: type[T]) -> type[T]:
        """Class decorator: one instance of ``plugin`` under its ``name``. Registering the same class
        again (a module imported twice) changes nothing; another class under a taken name is refused."""
        name = plugin.name  # type: ignore[attr-defined]
        known = self.get(name)
        if known is None:
            self[name] = plugin()
        elif type(known) is not plugin:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({type(known).__name__}, {plugin.__name__})")
        return plugin
