"""systemd's D-Bus API (org.freedesktop.systemd1.Manager), as migmanagerd needs it.

One private D-Bus connection per ``SystemdManager`` (through ``pydbus.connect``
on the system bus address, which honours ``DBUS_SYSTEM_BUS_ADDRESS``); not the
process-wide shared connection ``pydbus.SystemBus()`` returns, so ``close()``
really closes it and tests can point the environment at another bus.

Calls go straight to ``Gio.DBusConnection.call_sync`` with explicit signatures
and timeouts: no introspection round trips on the boot path, and every GLib
error becomes one typed ``MigManagerError`` that names the unit.

Jobs are waited for as systemctl does: ``Subscribe()`` once, issue the job,
then run a GLib main loop until the matching ``JobRemoved(id, job, unit,
result)`` arrives or the timeout passes. Use a manager from one thread: signals
are delivered on the main context that was current when it connected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from migmanagerd.errors import MigManagerError
from migmanagerd.log import get_logger

log = get_logger("systemd")

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"

# Job results systemd reports in JobRemoved (org.freedesktop.systemd1(5)):
# done, canceled, timeout, failed, dependency, skipped. Only "done" means the
# unit reached the requested state.
JOB_DONE = "done"


class SystemdError(MigManagerError):
    """A systemd D-Bus call failed for a reason not covered below."""


class BusUnavailable(SystemdError):
    """No D-Bus connection, or systemd is not on the bus."""


class UnitNotFound(SystemdError):
    def __init__(self, unit: str) -> None:
        self.unit = unit
        super().__init__(f"unit {unit}: not found (no unit file and not loaded)")


class UnitMasked(SystemdError):
    def __init__(self, unit: str) -> None:
        self.unit = unit
        super().__init__(f"unit {unit}: masked; unmask it with 'systemctl unmask {unit}' or remove it from clients.yaml")


class JobFailed(SystemdError):
    def __init__(self, unit: str, result: str, action: str = "job") -> None:
        self.unit = unit
        self.result = result
        self.action = action
        super().__init__(f"unit {unit}: {action} job finished with result '{result}' (see 'journalctl -u {unit}')")


class JobTimeout(SystemdError):
    def __init__(self, unit: str, seconds: float, action: str = "job") -> None:
        self.unit = unit
        self.seconds = seconds
        self.action = action
        super().__init__(f"unit {unit}: {action} job did not finish within {seconds:g}s")


@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str  # loaded, not-found, masked, bad-setting, error
    active_state: str  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str
    unit_file_state: str  # enabled, disabled, static, masked, … ("" when unknown)
    type: str  # service Type= (simple, oneshot, …); "" for non-services
    after: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        # "enabled-runtime" and "linked" also make a unit start at boot.
        return self.unit_file_state in ("enabled", "enabled-runtime", "linked", "linked-runtime")


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS


class SystemdManager:
    """A connection to systemd's manager object. Build with ``connect()``."""

    def __init__(self, bus: Any, address: str, timeout_s: float) -> None:
        # ``bus`` is a pydbus Bus; ``bus.con`` the Gio.DBusConnection.
        self._bus = bus
        self._con = bus.con
        self.address = address
        self._timeout_ms = max(1, int(timeout_s * 1000))
        # Results of the jobs this object waits for (not every job on the bus,
        # which JobRemoved also reports), keyed by job path.
        self._watched: set[str] = set()
        self._results: dict[str, str] = {}
        self._waiting: tuple[str, Any] | None = None  # (job path, GLib.MainLoop)
        self._context: Any = None  # the GLib main context signals arrive on
        self._subscription: Any = None
        self._closed = False

    # --- connection ---------------------------------------------------------

    @classmethod
    def connect(cls, timeout_s: float = 10.0) -> SystemdManager:
        """Connect to the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` if set).

        ``timeout_s`` bounds each D-Bus method call; job waits have their own.
        """
        import pydbus
        from gi.repository import GLib

        address = system_bus_address()
        try:
            bus = pydbus.connect(address)
        except GLib.Error as exc:
            raise BusUnavailable(f"cannot connect to the D-Bus system bus at {address}: {exc.message}") from None
        manager = cls(bus, address, timeout_s)
        # Prove systemd answers now, so a missing manager fails here, clearly.
        try:
            manager._manager_call("Subscribe", None, None, what="subscribe to systemd")
        except _RemoteError as exc:
            manager.close()
            raise exc.as_error("subscribe to systemd") from None
        return manager

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        from gi.repository import GLib

        try:
            self._con.close_sync(None)
        except GLib.Error:  # already closed by the peer: nothing left to release
            pass

    def __enter__(self) -> SystemdManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries ------------------------------------------------------------

    def unit(self, name: str) -> UnitState:
        """The unit's state, whatever it is (LoadUnit works for inactive units)."""
        path = self._unit_path(name)
        props = self._get_all(path, UNIT_IFACE, name)
        load_state = str(props.get("LoadState", ""))
        service_type = ""
        if name.endswith(".service") and load_state == "loaded":
            service_type = str(self._get_all(path, SERVICE_IFACE, name).get("Type", ""))
        return UnitState(
            name=str(props.get("Id", name)) or name,
            load_state=load_state,
            active_state=str(props.get("ActiveState", "")),
            sub_state=str(props.get("SubState", "")),
            unit_file_state=str(props.get("UnitFileState", "")),
            type=service_type,
            after=tuple(props.get("After", ())),
        )

    def after(self, name: str) -> tuple[str, ...]:
        """The unit's After= list (explicit and implicit ordering), cheaper
        than ``unit()`` when only ordering matters."""
        path = self._unit_path(name)
        return tuple(self._get(path, UNIT_IFACE, "After", f"unit {name}"))

    def service_environment(self, name: str) -> tuple[str, ...]:
        """The service's ``Environment=`` list as systemd loaded it
        (``NAME=value`` strings, later entries win), e.g. to prove a drop-in
        was read the way it was meant."""
        path = self._unit_path(name)
        return tuple(str(v) for v in self._get(path, SERVICE_IFACE, "Environment", f"unit {name}"))

    def unit_by_pid(self, pid: int) -> str | None:
        """The unit a process belongs to (by its cgroup), or None."""
        from gi.repository import GLib

        try:
            (path,) = self._manager_call("GetUnitByPID", GLib.Variant("(u)", (pid,)), "(o)", what=f"look up the unit of PID {pid}")
        except _RemoteError as exc:
            if exc.name in ("org.freedesktop.systemd1.NoUnitForPID", "org.freedesktop.systemd1.NoSuchProcess"):
                return None
            raise exc.as_error(f"look up the unit of PID {pid}") from None
        unit_id = self._get(path, UNIT_IFACE, "Id", f"PID {pid}")
        return str(unit_id) or None

    # --- jobs ---------------------------------------------------------------

    def stop(self, name: str, timeout_s: float) -> str:
        return self._run_job("StopUnit", name, "replace", timeout_s, "stop")

    def start(self, name: str, timeout_s: float) -> str:
        return self._run_job("StartUnit", name, "replace", timeout_s, "start")

    def restart(self, name: str, timeout_s: float) -> str:
        """Stop-and-start, waited for. A start of an active unit does nothing,
        so a service that must reread its files (slurmd) needs this."""
        return self._run_job("RestartUnit", name, "replace", timeout_s, "restart")

    def enqueue_start(self, name: str) -> str:
        """Queue a start job and return its path without waiting for it."""
        return self._enqueue("StartUnit", name, "start")

    def enqueue_restart(self, name: str) -> str:
        """Queue a restart job and return its path without waiting for it."""
        return self._enqueue("RestartUnit", name, "restart")

    def _enqueue(self, method: str, name: str, action: str) -> str:
        from gi.repository import GLib

        (job,) = self._unit_call(method, name, GLib.Variant("(ss)", (name, "replace")), "(o)", action)
        log.debug("queued %s of %s as %s", action, name, job)
        return str(job)

    def reload(self, timeout_s: float = 90.0) -> None:
        """daemon-reload. systemd answers Reload only once reloading is done."""
        what = "reload systemd (daemon-reload)"
        try:
            self._manager_call("Reload", None, None, what=what, timeout_s=timeout_s)
        except _RemoteError as exc:
            raise exc.as_error(what) from None

    def reboot(self) -> str:
        """Reboot the way ``systemctl reboot`` does; returns the job path."""
        from gi.repository import GLib

        (job,) = self._unit_call(
            "StartUnit", "reboot.target", GLib.Variant("(ss)", ("reboot.target", "replace-irreversibly")), "(o)", "start"
        )
        log.info("reboot requested (job %s)", job)
        return str(job)

    def _run_job(self, method: str, name: str, mode: str, timeout_s: float, action: str) -> str:
        from gi.repository import GLib

        self._ensure_subscribed()
        (job,) = self._unit_call(method, name, GLib.Variant("(ss)", (name, mode)), "(o)", action)
        # Signals are only dispatched while _wait_job runs the loop, so
        # watching the job now, after the call returned, misses nothing.
        self._watched.add(str(job))
        try:
            result = self._wait_job(str(job), name, timeout_s, action)
        finally:
            self._watched.discard(str(job))
        if result != JOB_DONE:
            raise JobFailed(name, result, action)
        return result

    def _ensure_subscribed(self) -> None:
        from gi.repository import GLib

        if self._subscription is not None:
            return
        # GDBus delivers the signal on the thread-default context current
        # now; the waits below run exactly that context.
        self._context = GLib.MainContext.ref_thread_default()
        self._subscription = self._bus.subscribe(
            sender=SYSTEMD_BUS_NAME,
            iface=MANAGER_IFACE,
            signal="JobRemoved",
            object=MANAGER_PATH,
            signal_fired=self._on_job_removed,
        )

    def _on_job_removed(self, sender: str, obj: str, iface: str, signal: str, params: tuple[Any, ...]) -> None:
        _job_id, job, _unit, result = params
        if str(job) not in self._watched:
            return
        self._results[str(job)] = str(result)
        if self._waiting is not None and self._waiting[0] == job:
            self._waiting[1].quit()

    def _wait_job(self, job: str, unit: str, timeout_s: float, action: str) -> str:
        from gi.repository import GLib

        if job not in self._results:
            loop = GLib.MainLoop.new(self._context, False)
            fired: list[str] = []

            def on_timeout() -> bool:
                fired.append("timeout")
                loop.quit()
                return False

            def on_closed(_con: object, _vanished: bool, error: Any) -> None:
                fired.append("closed")
                if error is not None:
                    fired.append(error.message)
                loop.quit()

            timer = GLib.timeout_source_new(max(1, int(timeout_s * 1000)))
            timer.set_callback(lambda *_: on_timeout())
            timer.attach(self._context)
            closed_handler = self._con.connect("closed", on_closed)
            self._waiting = (job, loop)
            try:
                loop.run()
            finally:
                self._waiting = None
                self._con.disconnect(closed_handler)
                timer.destroy()
            if "closed" in fired and job not in self._results:
                cause = f" ({fired[-1]})" if fired[-1] != "closed" else ""
                raise BusUnavailable(
                    f"unit {unit}: D-Bus connection to {self.address} closed while waiting for the {action} job{cause}"
                )
            if job not in self._results:
                raise JobTimeout(unit, timeout_s, action)
        return self._results.pop(job)

    # --- low-level calls ----------------------------------------------------

    def _unit_path(self, name: str) -> str:
        from gi.repository import GLib

        (path,) = self._unit_call("LoadUnit", name, GLib.Variant("(s)", (name,)), "(o)", "load")
        return str(path)

    def _unit_call(self, method: str, unit: str, params: Any, reply: str | None, action: str) -> tuple[Any, ...]:
        try:
            return self._manager_call(method, params, reply, what=f"{action} unit {unit}")
        except _RemoteError as exc:
            if exc.name == "org.freedesktop.systemd1.NoSuchUnit":
                raise UnitNotFound(unit) from None
            if exc.name == "org.freedesktop.systemd1.UnitMasked":
                raise UnitMasked(unit) from None
            raise exc.as_error(f"{action} unit {unit}") from None

    def _get_all(self, path: str, iface: str, unit: str) -> dict[str, Any]:
        from gi.repository import GLib

        (props,) = self._call(path, PROPS_IFACE, "GetAll", GLib.Variant("(s)", (iface,)), "(a{sv})", f"read properties of unit {unit}")
        properties: dict[str, Any] = props
        return properties

    def _get(self, path: str, iface: str, prop: str, what: str) -> Any:
        from gi.repository import GLib

        (value,) = self._call(path, PROPS_IFACE, "Get", GLib.Variant("(ss)", (iface, prop)), "(v)", f"read {prop} of {what}")
        return value

    def _manager_call(self, method: str, params: Any, reply: str | None, *, what: str, timeout_s: float | None = None) -> tuple[Any, ...]:
        return self._call(MANAGER_PATH, MANAGER_IFACE, method, params, reply, what, timeout_s=timeout_s, raw_remote=True)

    def _call(
        self,
        path: str,
        iface: str,
        method: str,
        params: Any,
        reply: str | None,
        what: str,
        *,
        timeout_s: float | None = None,
        raw_remote: bool = False,
    ) -> tuple[Any, ...]:
        """One method call. Remote errors are re-raised as ``_RemoteError``
        when ``raw_remote`` (so callers can map systemd's error names), else
        turned into typed errors here."""
        from gi.repository import Gio, GLib

        if self._closed:
            raise BusUnavailable(f"cannot {what}: the D-Bus connection to {self.address} was closed")
        timeout_ms = self._timeout_ms if timeout_s is None else max(1, int(timeout_s * 1000))
        reply_type = GLib.VariantType.new(reply) if reply else None
        try:
            result = self._con.call_sync(
                SYSTEMD_BUS_NAME,
                path,
                iface,
                method,
                params,
                reply_type,
                # systemd is never bus-activated: without it, fail at once
                # (ServiceUnknown) instead of trying an activation file.
                Gio.DBusCallFlags.NO_AUTO_START,
                timeout_ms,
                None,
            )
        except GLib.Error as exc:
            err = _RemoteError.from_glib(exc, self.address)
            if raw_remote and err.name:
                raise err from None
            raise err.as_error(what) from None
        return result.unpack() if result is not None else ()


class _RemoteError(Exception):
    """A GLib error from a call, with the D-Bus error name when remote."""

    def __init__(self, name: str, message: str, kind: str, address: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.kind = kind  # "remote", "closed", "timeout", "other"
        self.address = address

    @classmethod
    def from_glib(cls, exc: Any, address: str) -> _RemoteError:
        from gi.repository import Gio

        message = exc.message
        name = ""
        kind = "other"
        if Gio.DBusError.is_remote_error(exc):
            name = Gio.DBusError.get_remote_error(exc) or ""
            Gio.DBusError.strip_remote_error(exc)
            message = exc.message
            kind = "remote"
        elif exc.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CLOSED):
            kind = "closed"
        elif exc.matches(Gio.io_error_quark(), Gio.IOErrorEnum.TIMED_OUT):
            kind = "timeout"
        elif exc.matches(Gio.dbus_error_quark(), Gio.DBusError.SERVICE_UNKNOWN) or exc.matches(
            Gio.dbus_error_quark(), Gio.DBusError.NAME_HAS_NO_OWNER
        ):
            kind = "remote"
            name = "org.freedesktop.DBus.Error.ServiceUnknown"
        elif exc.matches(Gio.dbus_error_quark(), Gio.DBusError.NO_REPLY):
            kind = "timeout"
        return cls(name, message, kind, address)

    def as_error(self, what: str) -> SystemdError:
        if self.kind == "closed":
            return BusUnavailable(f"cannot {what}: the D-Bus connection to {self.address} closed")
        if self.name in (
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
        ) or self.name.startswith("org.freedesktop.DBus.Error.Spawn."):
            return BusUnavailable(f"cannot {what}: systemd is not on the D-Bus bus at {self.address}")
        if self.name in ("org.freedesktop.DBus.Error.Disconnected",):
            return BusUnavailable(f"cannot {what}: disconnected from the D-Bus bus at {self.address}")
        if self.kind == "timeout" or self.name == "org.freedesktop.DBus.Error.NoReply":
            return SystemdError(f"cannot {what}: systemd did not answer in time ({self.message})")
        return SystemdError(f"cannot {what}: {self.message}")

