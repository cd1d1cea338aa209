"""systemd units: enabled, running or stopped; reloads and restarts for handlers."""

from __future__ import annotations

from keel.operation import Change, Fail, NoChange, OpGenerator, Probe, operation, q

_PROPS = "LoadState,UnitFileState,ActiveState,NeedDaemonReload"
# UnitFileStates that ``systemctl is-enabled`` reports as enabled (exit 0).
_ENABLED = ("enabled", "enabled-runtime", "static", "alias", "generated", "indirect", "transient")


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@operation
def service(name: str, enabled: bool | None = True, running: bool | None = True) -> OpGenerator:
    """Unit ``name`` is enabled (or not) and running (or stopped).

    ``systemctl daemon-reload`` runs first only when systemd reports that a
    unit file changed on disk (NeedDaemonReload=yes), or when a unit it does not
    know is to be enabled or started. A missing unit asked to be disabled and/or
    stopped is left alone.

    Example: ``service(host, "nginx", enabled=True, running=True)``
    """
    res = yield Probe(f"systemctl show -p {_PROPS} {q(name)}")
    st = _parse(res.out)
    cmds: list[str] = []
    why: list[str] = []
    if st.get("NeedDaemonReload") == "yes":
        cmds.append("systemctl daemon-reload")
        why.append("unit file changed")
    absent = st.get("LoadState") == "not-found"
    if absent and (enabled is True or running is True):
        if not cmds:
            cmds.append("systemctl daemon-reload")
        why.append("new unit")
    elif not absent and st.get("LoadState") not in (None, "loaded") and not cmds:
        return Fail(f"unit {name} cannot be loaded ({st.get('LoadState')})")
    file_state = st.get("UnitFileState", "")
    if enabled is True and file_state not in _ENABLED:
        cmds.append(f"systemctl enable {q(name)}")
        why.append("enabled")
    elif enabled is False and file_state == "enabled":
        cmds.append(f"systemctl disable {q(name)}")
        why.append("disabled")
    active = st.get("ActiveState", "")
    if running is True and active != "active":
        cmds.append(f"systemctl start {q(name)}")
        why.append("started")
    elif running is False and active in ("active", "activating", "reloading"):
        cmds.append(f"systemctl stop {q(name)}")
        why.append("stopped")
    if not cmds:
        return NoChange("unit absent" if absent else f"{file_state or 'unknown'}, {active or 'unknown'}")
    return Change(cmds, ", ".join(why))


@operation
def restart(name: str, *more: str) -> OpGenerator:
    """Restart ``name`` (and ``more`` units, in one job) now, for handlers. Always a change.

    Example: ``restart(host, "hello.socket", "hello.service")``
    """
    return Change([f"systemctl restart {' '.join(q(n) for n in (name, *more))}"], "restarted")
    yield  # pragma: no cover - makes this a generator


@operation
def reload(name: str) -> OpGenerator:
    """Reload ``name`` gracefully (``systemctl reload``), starting it if it is stopped."""
    return Change([f"systemctl reload-or-restart {q(name)}"], "reloaded")
    yield  # pragma: no cover


@operation
def daemon_reload() -> OpGenerator:
    """Make systemd re-read unit files."""
    return Change(["systemctl daemon-reload"], "unit files re-read")
    yield  # pragma: no cover
