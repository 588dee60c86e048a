"""The engine's opt-in extension registry.

Graphs built without explicit ``hooks`` use the hooks installed here, and add the event sinks
installed here to their own. It is empty unless something installs into it (for example the
OpenTelemetry instrumentor), so a plain program behaves exactly as written.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .events import EventSink
from .seams import RunHook

__all__ = ("Extension", "ExtensionRegistry", "default_extensions")


@dataclass(frozen=True, slots=True)
class Extension:
    """Hooks and sinks installed together under one key."""

    key: str
    hooks: tuple[RunHook, ...] = ()
    event_sinks: tuple[EventSink, ...] = ()


class ExtensionRegistry:
    """Installed extensions, by key; reads are lock-free snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._extensions: dict[str, Extension] = {}
        self._hooks: tuple[RunHook, ...] = ()
        self._sinks: tuple[EventSink, ...] = ()

    def install(
        self, key: str, *, hooks: Sequence[RunHook] = (), event_sinks: Sequence[EventSink] = ()
    ) -> None:
        """Install (or replace) the extension ``key``."""
        with self._lock:
            self._extensions[key] = Extension(key, tuple(hooks), tuple(event_sinks))
            self._refresh()

    def uninstall(self, key: str) -> bool:
        """Remove the extension ``key``; returns whether it was installed."""
        with self._lock:
            removed = self._extensions.pop(key, None) is not None
            self._refresh()
            return removed

    def get(self, key: str) -> Extension | None:
        """The extension installed under ``key``."""
        return self._extensions.get(key)

    @property
    def hooks(self) -> tuple[RunHook, ...]:
        """Hooks of every installed extension."""
        return self._hooks

    @property
    def event_sinks(self) -> tuple[EventSink, ...]:
        """Event sinks of every installed extension."""
        return self._sinks

    def _refresh(self) -> None:
        self._hooks = tuple(h for e in self._extensions.values() for h in e.hooks)
        self._sinks = tuple(s for e in self._extensions.values() for s in e.event_sinks)


default_extensions = ExtensionRegistry()
"""The registry graphs consult when built without explicit ``hooks``."""
