"""Plugins: stages, interceptors and event sinks other distributions provide by name.

A distribution registers an object under one of three entry-point groups in its
``pyproject.toml``::

    [project.entry-points."stageflow_otel.stages"]
    geocode = "acme_stages.geo:geocode"

    [project.entry-points."stageflow_otel.interceptors"]
    audit = "acme_stages.audit:AuditInterceptor"

    [project.entry-points."stageflow_otel.sinks"]
    kafka = "acme_stages.kafka:KafkaEventSink"

A pipeline file then names it (``runner: geocode``, ``use: audit``). Nothing is imported
until a plugin is asked for by name (:func:`load_plugin`), so one broken plugin never breaks
the others; loading it fails with a :class:`PluginError` that names its distribution and
entry point. ``stageflow-otel plugins`` lists what is installed.

What each group's object is:

- ``stageflow_otel.stages``: a stage runner (a ``Stage`` class or instance, an ``async def
  f(ctx)`` or a ``def f(ctx)``), exactly what ``Pipeline.with_stage`` accepts.
- ``stageflow_otel.interceptors``: a class or factory; calling it with the entry's ``args``
  as keyword arguments returns an interceptor.
- ``stageflow_otel.sinks``: a class or factory; calling it with ``args`` returns an event
  sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from .core.errors import StageflowError

__all__ = (
    "INTERCEPTOR_GROUP",
    "PLUGIN_GROUPS",
    "SINK_GROUP",
    "STAGE_GROUP",
    "PluginError",
    "PluginGroup",
    "PluginInfo",
    "installed_plugins",
    "load_plugin",
)

PluginGroup = Literal[
    "stageflow_otel.stages", "stageflow_otel.interceptors", "stageflow_otel.sinks"
]
"""The entry-point groups stageflow-otel reads."""

STAGE_GROUP: PluginGroup = "stageflow_otel.stages"
INTERCEPTOR_GROUP: PluginGroup = "stageflow_otel.interceptors"
SINK_GROUP: PluginGroup = "stageflow_otel.sinks"
PLUGIN_GROUPS: tuple[PluginGroup, ...] = (STAGE_GROUP, INTERCEPTOR_GROUP, SINK_GROUP)

_KIND = {STAGE_GROUP: "stage", INTERCEPTOR_GROUP: "interceptor", SINK_GROUP: "event sink"}


class PluginError(StageflowError):
    """A plugin is not installed, is ambiguous, or fails to load.

    Attributes:
        group: The entry-point group.
        name: The plugin name.
        distribution: The distribution that provides it (``name version``), when known.
        reason: What went wrong.
        fix_hint: How to fix it.
    """

    code = "PLUGIN"

    def __init__(
        self,
        reason: str,
        *,
        group: str,
        name: str,
        distribution: str | None = None,
        fix_hint: str | None = None,
    ) -> None:
        self.group = group
        self.name = name
        self.distribution = distribution
        self.reason = reason
        self.fix_hint = fix_hint
        super().__init__(f"{reason}. Fix: {fix_hint}" if fix_hint else reason)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin, as its distribution declares it (nothing imported).

    Attributes:
        group: The entry-point group.
        name: The plugin name.
        value: What the entry point points at (``module:attribute``).
        distribution: The name of the distribution that provides it.
        version: That distribution's version.
    """

    group: str
    name: str
    value: str
    distribution: str
    version: str

    @property
    def entry_point(self) -> str:
        """The entry point as written in the distribution's metadata (``name = value``)."""
        return f"{self.name} = {self.value}"


def _info(group: str, entry: EntryPoint) -> PluginInfo:
    dist = entry.dist
    name = dist.metadata["Name"] if dist is not None else "?"
    version = dist.version if dist is not None else "?"
    return PluginInfo(group, entry.name, entry.value, str(name), str(version))


def _check_group(group: object) -> str:
    if group not in PLUGIN_GROUPS:
        raise ValueError(
            f"unknown plugin group {group!r}; the groups are {', '.join(PLUGIN_GROUPS)}"
        )
    return str(group)


def installed_plugins(group: PluginGroup | None = None) -> list[PluginInfo]:
    """The installed plugins of one group (or of every group), sorted by group and name.

    Reads the distributions' metadata only; no plugin is imported.

    Raises:
        ValueError: For a group that is not one of :data:`PLUGIN_GROUPS`.
    """
    groups = PLUGIN_GROUPS if group is None else (_check_group(group),)
    found = [_info(g, entry) for g in groups for entry in entry_points(group=g)]
    order: dict[str, int] = {group: index for index, group in enumerate(PLUGIN_GROUPS)}
    return sorted(found, key=lambda p: (order[p.group], p.name, p.distribution))


def load_plugin(group: PluginGroup, name: str) -> Any:
    """Import the plugin ``name`` of ``group`` and return the object its entry point names.

    Raises:
        PluginError: No installed distribution provides it (the message lists those that
            are installed), two do, or importing it fails (the message names the
            distribution, the entry point and the error).
        ValueError: For a group that is not one of :data:`PLUGIN_GROUPS`.
    """
    _check_group(group)
    kind = _KIND[group]
    matches = [entry for entry in entry_points(group=group) if entry.name == name]
    if not matches:
        installed = sorted({entry.name for entry in entry_points(group=group)})
        listed = ", ".join(installed) if installed else "none is installed"
        raise PluginError(
            f"no {kind} plugin named {name!r} (entry-point group {group!r}; installed: {listed})",
            group=group,
            name=name,
            fix_hint="install the distribution that provides it, or check the name with "
            "`stageflow-otel plugins`",
        )
    infos = [_info(group, entry) for entry in matches]
    if len({(i.distribution, i.value) for i in infos}) > 1:
        providers = "; ".join(f"{i.distribution} {i.version} ({i.entry_point})" for i in infos)
        raise PluginError(
            f"{kind} plugin {name!r} is provided by more than one distribution: {providers}",
            group=group,
            name=name,
            fix_hint="uninstall all but one, or name the object by its import path instead",
        )
    info = infos[0]
    distribution = f"{info.distribution} {info.version}"
    try:
        return matches[0].load()
    except Exception as exc:
        raise PluginError(
            f"{kind} plugin {name!r} from distribution {distribution} (entry point "
            f"{info.entry_point!r} in group {group!r}) failed to load: "
            f"{type(exc).__name__}: {exc}",
            group=group,
            name=name,
            distribution=distribution,
            fix_hint=f"repair or reinstall {info.distribution}, or remove the reference to it",
        ) from exc
