"""Engine micro-benchmark: no-change runs of 20 operations through ``keel.runner.run_play``.

On kbench lab hosts: converge a body of 20 operations (directories, files, symlinks,
packages, services) once, then time no-change runs on 1 host and on 10 hosts in
parallel, count round trips per operation, time each operation kind, and compare with
one bare SSH round trip. Writes docs/bench/engine.md and engine.png.

    .venv/bin/python bench/engine.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import benchlib as bl
from benchlib import log
from rich.console import Console

from keel.host import Host
from keel.inventory import HostSpec, Inventory
from keel.ops import apt, files, systemd
from keel.output import Reporter
from keel.runner import HostOutcome, Play, RunOptions, run_play

BASE = "/srv/kbench-engine"
OPS = 20


def body(timings: dict[str, list[float]] | None = None) -> Callable[[Host], None]:
    """The 20 operations; with ``timings``, each operation's seconds are recorded by kind."""

    def timed(kind: str, fn: Callable[..., Any], host: Host, *args: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        fn(host, *args, **kw)
        if timings is not None:
            timings[kind].append(time.perf_counter() - t0)

    def run(host: Host) -> None:
        for i in range(5):
            timed("directory", files.directory, host, f"{BASE}/d{i}", mode="0755")
        for i in range(5):
            timed("file", files.file, host, f"{BASE}/d{i}/f.conf", f"value = {i}\n" * 20,
                  mode="0644")
        for i in range(4):
            timed("symlink", files.symlink, host, f"{BASE}/l{i}", f"{BASE}/d{i}/f.conf")
        timed("packages", apt.packages, host, ["openssh-server", "sudo"])
        timed("packages", apt.packages, host, ["python3", "curl"])
        for unit in ("ssh", "systemd-networkd", "systemd-journald", "dbus"):
            timed("service", systemd.service, host, unit, enabled=True, running=True)

    return run


def quiet() -> Reporter:
    return Reporter(console=Console(file=io.StringIO()))


CPU: list[float] = [0.0, 0.0]  # controller CPU s (all threads), whole-machine busy s: last run


def machine_busy() -> float:
    """CPU seconds every process on the machine (lab hosts included) has used so far."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def play_run(specs: list[HostSpec], fn: Callable[[Host], None]) -> tuple[float, list[HostOutcome]]:
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    m0 = machine_busy()
    t0 = time.perf_counter()
    outcomes = run_play(specs, Play("engine-bench", []), RunOptions(parallel=len(specs)),
                        reporter=quiet(), body=fn)
    took = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    CPU[0] = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    CPU[1] = machine_busy() - m0
    bad = [o for o in outcomes if o.failed or o.unreachable]
    if bad:
        raise RuntimeError(f"{bad[0].name}: {bad[0].error}")
    return took, outcomes


def floor(spec: HostSpec, lab: Any, samples: int = 200) -> float:
    """Median round trip of 64 bytes through ``cat`` on an open paramiko channel (TCP_NODELAY)."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts))
    client.connect(spec.address, username="debian", key_filename=str(lab.key_file),
                   look_for_keys=False, allow_agent=False, timeout=10)
    transport = client.get_transport()
    assert transport is not None
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chan = transport.open_session()
    chan.exec_command("cat")
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        chan.sendall(b"x" * 63 + b"\n")
        got = b""
        while len(got) < 64:
            got += chan.recv(64 - len(got))
        times.append(time.perf_counter() - t0)
    client.close()
    return bl.median(times)


def agent_floor(spec: HostSpec, samples: int = 100) -> float:
    """Median time of ``true`` through keel's agent: a round trip plus the agent's own cost."""
    from keel.connection import Connection

    conn = Connection.open(spec)
    try:
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            conn.run("true")
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return bl.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer runs")
    p.add_argument("--runs", type=int, help="no-change runs per case (default 10; quick 5)")
    args = p.parse_args()
    runs = args.runs or (5 if args.quick else 10)
    started = time.monotonic()
    bl.ensure_venv("plot")
    info = bl.machine_info()
    work = bl.WORK / "engine"
    inv = work / "inv" / "lab.yml"
    res: dict[str, Any] = {}
    with bl.lab_session() as lab:
        bl.fresh_hosts(lab, 10, inv)
        specs = Inventory.load(inv).hosts()
        log("converging the 20 operations on 10 hosts")
        res["first_run_10"], _ = play_run(specs, body())
        _, empty = play_run(specs[:1], lambda h: None)
        res["empty_rt"] = empty[0].round_trips
        one, ten, conn1, rt1, eng1 = [], [], [], [], []
        empty_s, empty10, cpu1, cpu10, busy10 = [], [], [], [], []
        timings: dict[str, list[float]] = defaultdict(list)
        for i in range(runs):
            took, out = play_run(specs[:1], lambda h: None)
            empty_s.append(took)
            took, out = play_run(specs, lambda h: None)
            empty10.append(took)
            took, out = play_run(specs[:1], body(timings))
            one.append(took)
            cpu1.append(CPU[0])
            conn1.append(out[0].connect_seconds)
            rt1.append(out[0].round_trips)
            eng1.append(out[0].seconds)
            assert out[0].changed == 0, "a no-change run changed something"
            took, out = play_run(specs, body())
            ten.append(took)
            cpu10.append(CPU[0])
            busy10.append(CPU[1] / took / (os.cpu_count() or 1))
            assert sum(o.changed for o in out) == 0
            log(f"run {i + 1}/{runs}: 1 host {one[-1]:.3f} s, 10 hosts {ten[-1]:.3f} s")
        res.update(one=one, ten=ten, conn1=conn1, rt1=rt1, eng1=eng1, empty=empty_s,
                   empty10=empty10, cpu1=cpu1, cpu10=cpu10, busy10=busy10,
                   timings=dict(timings), floor=floor(specs[0], lab),
                   agent_floor=agent_floor(specs[0]))
    bl.save_json(bl.DOCS / "engine.json", {"info": info, "results": res})
    text = report(res, info, runs, args.quick, started)
    (bl.DOCS / "engine.md").write_text(text)
    kinds = sorted(res["timings"])
    bl.plot({"kind": "bar", "title": "keel engine: median ms per no-change operation, by kind",
             "x": kinds, "xlabel": "operation", "ylabel": "ms",
             "series": {"operation": [bl.median(res["timings"][k]) * 1000 for k in kinds],
                        "bare SSH round trip": [res["floor"] * 1000 for _ in kinds]}},
            bl.DOCS / "engine.png")
    print(text)


def report(r: dict[str, Any], info: dict[str, str], runs: int, quick: bool, started: float) -> str:
    one, ten = bl.median(r["one"]), bl.median(r["ten"])
    rt = bl.median(r["rt1"])
    per_op_rt = (rt - r["empty_rt"]) / OPS
    ops_s = one - bl.median(r["empty"])
    rows = [
        ["no-change run, 1 host (run_play wall)", bl.fmt_s(one)],
        ["no-change run, 10 hosts in parallel (run_play wall)", bl.fmt_s(ten)],
        ["10 hosts ÷ 1 host", f"{ten / one:.2f}x"],
        ["connect + agent start, 1 host", bl.fmt_s(bl.median(r["conn1"]))],
        ["empty play (connect, agent, facts), 1 host", bl.fmt_s(bl.median(r["empty"]))],
        ["empty play, 10 hosts in parallel", bl.fmt_s(bl.median(r["empty10"]))],
        ["controller CPU (all threads), no-change run, 1 host", bl.fmt_s(bl.median(r["cpu1"]))],
        ["controller CPU (all threads), no-change run, 10 hosts",
         bl.fmt_s(bl.median(r["cpu10"]))],
        ["whole machine CPU busy during the 10-host runs (all cores, lab hosts included)",
         f"{bl.median(r['busy10']) * 100:.0f}%"],
        ["the 20 operations alone (run - empty play)", f"{ops_s * 1000:.0f} ms "
                                                        f"({ops_s / OPS * 1000:.1f} ms per op)"],
        ["round trips, whole run (median)", f"{rt:.0f}"],
        ["round trips, empty play", f"{r['empty_rt']}"],
        ["round trips per no-change operation", f"{per_op_rt:.2f}"],
        ["bare SSH round trip (paramiko, TCP_NODELAY)", f"{r['floor'] * 1000:.2f} ms"],
        ["`true` through keel's agent", f"{r['agent_floor'] * 1000:.2f} ms"],
        ["first (converging) run, 10 hosts", bl.fmt_s(r["first_run_10"])],
    ]
    kinds = [[k, len(v), f"{bl.median(v) * 1000:.1f} ms", f"{max(v) * 1000:.1f} ms"]
             for k, v in sorted(r["timings"].items())]
    goal_1 = one <= 1.0
    goal_10 = ten <= 2 * one
    return "\n".join([
        "# Engine micro-benchmark", "",
        f"`bench/engine.py{' --quick' if quick else ''}`: `keel.runner.run_play` with a body of "
        f"{OPS} operations (5 directories, 5 files, 4 symlinks, 2 package sets, 4 services) on "
        "kbench lab hosts, converged once, then timed no-change runs "
        f"({runs} each; medians). Times are in-process (no CLI start-up).", "",
        "## Machine", "", bl.md_kv({**info, "wall time of this benchmark":
                                   f"{(time.monotonic() - started) / 60:.1f} min",
                                   "load average at end": bl.load_now()}), "",
        "## Results", "", bl.md_table(["what", "value"], rows), "",
        "## Per operation kind (1 host, no-change)", "",
        bl.md_table(["kind", "samples", "median", "max"], kinds), "",
        "![per-operation time](engine.png)", "",
        "## Goals", "",
        f"- **{'met' if goal_1 else 'missed'}**: no-change converge of {OPS} operations on one "
        f"host ≤ 1 s: {bl.fmt_s(one)}",
        f"- **{'met' if goal_10 else 'missed'}**: 10 hosts in parallel ≤ 2x one host: "
        f"{ten / one:.2f}x",
        f"- round trips per no-change operation: {per_op_rt:.2f} (the design says 1)", "",
        "Run: `.venv/bin/python bench/engine.py [--quick]`. Raw: `docs/bench/engine.json`.",
        "",
    ])


if __name__ == "__main__":
    main()
