"""status: what every app is doing right now, read from systemd and uWSGI's stats socket.

One round trip per host: a python3 script on the host reads the state of each
app's unit and of nginx, the release ``/srv/<app>/current`` points to, and
each app's stats socket (``/run/<app>/stats.sock``, JSON), and returns only
the fields shown, with the host's monotonic clock. It also reports a reboot
that updates asked for (``/run/reboot-required``, written by Debian's
packages; unattended-upgrades never reboots: keel leaves that to the user). On a load balancer it
reads the upstream instead: which app hosts are up and which are ``down``.

The columns are uwsgitop's, summed over an app's workers:

- workers: running workers / configured ``processes`` (cheaper stops idle
  ones down to ``cheaper``; those have pid 0);
- busy/idle: running workers serving a request / waiting for one;
- requests: served since the master started (worker counters survive respawns);
- RPS: requests per second, from two samples taken on the host ``gap`` seconds
  apart in the same round trip, or, when refreshing (``--watch``), from the
  change since the previous refresh;
- avg ms: uWSGI's running average response time, weighted by each worker's requests;
- RSS: resident memory of the running workers (uWSGI's ``memory-report``);
- respawns, exceptions: summed over the workers.

Example::

    with Fleet(hosts, login=login) as fleet:
        report = collect(fleet, gap=1.0)
    print_table(report)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from keel.errors import KeelError
from keel.fleet import Fleet
from keel.host import Host
from keel.operation import q
from roles import apps, lb, uwsgi

# Runs on the host (as root: the stats sockets are 0600). JSON in on stdin, JSON out.
PROBE = uwsgi.READ_STATS + r"""
import os, re, subprocess, sys, time
spec = json.load(sys.stdin)
KEYS = ("pid", "status", "requests", "exceptions", "respawn_count", "avg_rt", "rss")
def stats(path):
    d = read_stats(path, timeout=3)
    return {"t": time.monotonic(), "listen_queue": d.get("listen_queue", 0),
            "workers": [{k: w.get(k, 0) for k in KEYS} for w in d.get("workers", [])]}
def sample():
    out = {}
    for a in spec["apps"]:
        try:
            out[a["name"]] = stats(a["stats"])
        except (OSError, ValueError) as e:
            out[a["name"]] = {"error": f"stats socket {a['stats']}: {e.strerror or e}"
                              if isinstance(e, OSError) else f"stats socket {a['stats']}: {e}"}
    return out
units = [a["unit"] for a in spec["apps"]] + ["nginx.service"]
states = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True).stdout.split()
states += ["unknown"] * (len(units) - len(states))
samples = [sample()]
if spec["gap"] > 0:
    time.sleep(spec["gap"])
    samples.append(sample())
out = {"nginx": states[-1], "apps": {}, "backends": [], "reboot": None}
if os.path.exists("/run/reboot-required"):
    try:
        out["reboot"] = sorted(set(open("/run/reboot-required.pkgs").read().split()))
    except OSError:
        out["reboot"] = []
for a, state in zip(spec["apps"], states):
    try:
        release = os.readlink(a["current"]).rsplit("/", 1)[-1]
    except OSError:
        release = ""
    out["apps"][a["name"]] = {"state": state, "release": release,
                              "samples": [s[a["name"]] for s in samples]}
if spec.get("lb_site"):
    try:
        text = open(spec["lb_site"]).read()
    except OSError:
        text = ""
    for m in re.finditer(r"^\s*server\s+(\S+)\s[^;]*?(\sdown)?;\s*#\s*(\S+)", text, re.M):
        out["backends"].append({"name": m.group(3), "address": m.group(1), "down": bool(m.group(2))})
print(json.dumps(out))
"""


@dataclass
class AppStatus:
    """One app on one host. Numbers are None when the stats socket could not be read."""

    host: str
    app: str
    service: str
    release: str
    nginx: str
    workers: int | None = None
    processes: int | None = None
    busy: int | None = None
    idle: int | None = None
    requests: int | None = None
    rps: float | None = None
    avg_ms: float | None = None
    rss_mib: float | None = None
    respawns: int | None = None
    exceptions: int | None = None
    listen_queue: int | None = None
    error: str = ""


@dataclass
class HostStatus:
    host: str
    nginx: str = ""
    apps: list[AppStatus] = field(default_factory=list)
    #: On a load balancer: its upstream, ``{"name", "address", "down"}`` per app host.
    backends: list[dict[str, Any]] = field(default_factory=list)
    #: None, or the packages that asked for a reboot (/run/reboot-required[.pkgs]).
    reboot: list[str] | None = None
    error: str = ""


@dataclass
class Report:
    hosts: list[HostStatus]
    #: How RPS was measured, in words (shown under the table).
    rps_method: str

    def to_dict(self) -> dict[str, Any]:
        return {"rps_method": self.rps_method, "hosts": {
            h.host: {"nginx": h.nginx, "error": h.error, "backends": h.backends,
                     "reboot_required": h.reboot is not None, "reboot_packages": h.reboot or [],
                     "apps": {a.app: {k: v for k, v in asdict(a).items() if k not in ("host", "app")}
                              for a in h.apps}}
            for h in self.hosts}}


def _wanted(host: Host, only: str) -> list[dict[str, str]]:
    if lb.is_balancer(host.spec):
        return []
    found = []
    for app in apps.expectations(host.vars)["apps"]:
        if only and app["name"] != only:
            continue
        found.append({"name": app["name"], "unit": app["unit"], "stats": app["stats_socket"],
                      "current": f"/srv/{app['name']}/current"})
    return found


def probe(host: Host, gap: float, only: str = "") -> dict[str, Any]:
    """The raw reading of one host: one round trip."""
    spec = {"apps": _wanted(host, only), "gap": gap,
            "lb_site": lb.SITE if lb.is_balancer(host.spec) else ""}
    res = host.run("python3 -c " + q(PROBE), stdin=json.dumps(spec).encode())
    if not res.ok:
        raise KeelError(f"{host.name}: status probe failed: "
                        f"{(res.err.strip().splitlines() or [f'exit {res.rc}'])[-1]}")
    return json.loads(res.out)


def summarize(host: str, name: str, raw: Mapping[str, Any], nginx: str,
              previous: Mapping[str, Any] | None = None) -> AppStatus:
    """Sum one app's workers from its samples (the last one; RPS from the two, or from ``previous``).

    >>> w = {"pid": 7, "status": "busy", "requests": 10, "exceptions": 0, "respawn_count": 1,
    ...      "avg_rt": 2000, "rss": 50 * 2**20}
    >>> cheap = {**w, "pid": 0, "status": "cheap"}
    >>> s = [{"t": 1.0, "listen_queue": 0, "workers": [w, cheap]},
    ...      {"t": 2.0, "listen_queue": 0, "workers": [{**w, "requests": 30}, cheap]}]
    >>> a = summarize("web1", "hello", {"state": "active", "release": "r1", "samples": s}, "active")
    >>> (a.workers, a.processes, a.busy, a.requests, a.rps, a.avg_ms, a.rss_mib)
    (1, 2, 1, 40, 20.0, 2.0, 50.0)
    """
    status = AppStatus(host, name, raw.get("state", "?"), raw.get("release", ""), nginx)
    samples = raw.get("samples") or []
    last = samples[-1] if samples else {"error": "no sample"}
    if "error" in last:
        status.error = last["error"]
        return status
    running = [w for w in last["workers"] if w["pid"] > 0]
    status.workers, status.processes = len(running), len(last["workers"])
    status.busy = sum(1 for w in running if w["status"] == "busy")
    status.idle = sum(1 for w in running if w["status"] == "idle")
    status.requests = sum(w["requests"] for w in last["workers"])
    served = [w for w in running if w["requests"] > 0]
    weight = sum(w["requests"] for w in served)
    status.avg_ms = round(sum(w["avg_rt"] * w["requests"] for w in served) / weight / 1000, 1) \
        if weight else None
    status.rss_mib = round(sum(w["rss"] for w in running) / 2**20, 1)
    status.respawns = sum(w["respawn_count"] for w in last["workers"])
    status.exceptions = sum(w["exceptions"] for w in last["workers"])
    status.listen_queue = last.get("listen_queue", 0)
    first = samples[0] if len(samples) > 1 else previous
    if first and "error" not in first and last["t"] > first["t"]:
        before = sum(w["requests"] for w in first["workers"])
        if status.requests >= before:  # a restarted master starts counting again
            status.rps = round((status.requests - before) / (last["t"] - first["t"]), 1)
    return status


class Collector:
    """Reads every host of a :class:`Fleet`; remembers the last sample for RPS between refreshes."""

    def __init__(self, fleet: Fleet, only: str = "") -> None:
        self.fleet = fleet
        self.only = only
        self._last: dict[tuple[str, str], dict[str, Any]] = {}

    def collect(self, gap: float) -> list[HostStatus]:
        raw = self.fleet.map(lambda host: probe(host, gap, self.only))
        out = []
        for name, value in raw.items():
            if isinstance(value, KeelError):
                out.append(HostStatus(name, error=str(value)))
                continue
            hs = HostStatus(name, nginx=value["nginx"], backends=value["backends"],
                            reboot=value.get("reboot"))
            for app, data in value["apps"].items():
                hs.apps.append(summarize(name, app, data, value["nginx"], self._last.get((name, app))))
                if data["samples"] and "error" not in data["samples"][-1]:
                    self._last[(name, app)] = data["samples"][-1]
            out.append(hs)
        return out


# ------------------------------------------------------------------ display
# Two-line headers keep the table within 100 columns.
COLUMNS = ["host", "app", "service", "release", "workers", "busy/\nidle", "requests", "RPS",
           "avg\nms", "RSS\nMiB", "respawns", "exceptions", "nginx"]
TEXT_COLUMNS = ("host", "app", "service", "release", "nginx")


def _state(value: str) -> Text:
    return Text(value, style="green" if value == "active" else "red")


def _num(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(report: Report) -> Group:
    """The rich table of a report, with how RPS was measured underneath."""
    t = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1, 0, 0))
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in TEXT_COLUMNS else "right", no_wrap=True)
    problems: list[Text] = []
    for h in report.hosts:
        if h.error:
            t.add_row(h.host, "", Text("unread", style="red"), *[""] * (len(COLUMNS) - 3))
            problems.append(Text(h.error, style="red"))
            continue
        if h.backends:
            down = [b["name"] for b in h.backends if b["down"]]
            t.add_row(h.host, "(lb)", "", f"{len(h.backends) - len(down)}/{len(h.backends)} up",
                      *[""] * (len(COLUMNS) - 5), _state(h.nginx))
            if down:
                problems.append(Text(f"{h.host}: out of its upstream: {', '.join(down)}",
                                     style="yellow"))
        for a in h.apps:
            if a.error:
                t.add_row(a.host, a.app, _state(a.service), a.release, Text("-", style="red"),
                          *[""] * (len(COLUMNS) - 6), _state(a.nginx))
                problems.append(Text(f"{a.host}: {a.app}: {a.error}", style="red"))
                continue
            t.add_row(a.host, a.app, _state(a.service), a.release, f"{a.workers}/{a.processes}",
                      f"{a.busy}/{a.idle}", _num(a.requests), _num(a.rps), _num(a.avg_ms),
                      _num(a.rss_mib), _num(a.respawns), _num(a.exceptions), _state(a.nginx))
        if not h.apps and not h.backends:
            t.add_row(h.host, "", "", "", *[""] * (len(COLUMNS) - 5), _state(h.nginx))
        if h.reboot is not None:
            pkgs = f" (for {', '.join(h.reboot)})" if h.reboot else ""
            problems.append(Text(f"{h.host}: reboot required{pkgs}", style="yellow"))
    note = Text(f"RPS: {report.rps_method}; workers: running/configured (cheaper)", style="dim")
    return Group(t, *problems, note)


def show(fleet: Fleet, *, only: str = "", watch: bool = False, interval: float = 2.0,
         count: int = 0, as_json: bool = False, gap: float = 1.0,
         console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> int:
    """Print the table (or JSON) once, or refresh it every ``interval`` seconds until Ctrl-C.

    ``count`` > 0 stops after that many refreshes. With ``as_json`` and
    ``watch``, one JSON document per line per refresh. Returns how many hosts
    could not be read (at the last refresh).
    """
    console = console or Console(highlight=False)
    collector = Collector(fleet, only)
    if not watch:
        report = Report(collector.collect(gap), f"requests in {gap:g} s between two samples")
        _check_app(report, only)
        if as_json:
            console.print_json(json.dumps(report.to_dict()))
        else:
            console.print(table(report))
        return sum(1 for h in report.hosts if h.error)
    method = f"change since the previous refresh (every {interval:g} s)"
    n = 0
    with Live(console=console, auto_refresh=False, transient=False) if not as_json \
            else _NoLive() as live:
        try:
            while True:
                t0 = clock()
                report = Report(collector.collect(0), method)
                n += 1
                if n == 1:
                    _check_app(report, only)
                if as_json:
                    console.print(json.dumps(report.to_dict()), soft_wrap=True, highlight=False,
                                  markup=False)
                else:
                    live.update(table(report), refresh=True)
                if count and n >= count:
                    break
                time.sleep(max(0.0, interval - (clock() - t0)))
        except KeyboardInterrupt:
            pass
    return 0


def _check_app(report: Report, only: str) -> None:
    if only and not any(h.apps or h.error for h in report.hosts):
        raise KeelError(f"status: no selected host runs an app named {only!r}")


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass
