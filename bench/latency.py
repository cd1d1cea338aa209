"""Latency benchmark: no-change deploys of keel, Ansible (pipelining) and pyinfra over a delaying relay.

One fresh lab host (its own lab, ``--lab``/``--subnet``) is converged by keel; Ansible and pyinfra
take it over once (their own markers); then, for each one-way delay, every
tool's no-change run goes through the same :class:`relay.Relay` (user space,
both directions), which also counts the round trips each tool waited for
(SSH handshake included). keel runs twice per round: as a user's next run does,
on the SSH connection the previous run kept (``keel.control``; kept 600 s here,
as the Ansible pipelining config's ControlPersist=600s keeps Ansible's), and with
``--no-persist``, connecting on its own. keel's own ``--stats`` round trips and
the fab process's CPU seconds and peak RSS (``getrusage``) are recorded too. Writes the
report ``docs/bench/latency.md`` (medians, ratios, every round, the targets), its data
``docs/bench/latency.json`` and a plot ``docs/bench/provision-latency.png``;
``docs/bench/provision.md`` quotes them.

    .venv/bin/python bench/latency.py [--delays-ms 0,10,20,25,50] [--runs 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as bl
import provision as pv
import yaml
from benchlib import log
from relay import Relay

KEEL_COLD = "keel (--no-persist)"
TOOLS = [pv.KEEL, KEEL_COLD, pv.ANS_PIPE, pv.PYINFRA]
KEEL_TOOLS = (pv.KEEL, KEEL_COLD)


def keel_nochange(bench: pv.Bench, label: str, persist: bool = True
                  ) -> tuple[float, float, int, int]:
    """(wall s, CPU s, peak RSS KiB, --stats round trips) of one no-change ``fab deploy``.

    CPU (user + sys) and peak RSS are the fab process's own (getrusage, through
    GNU time), start-up included.
    """
    js, usage = bench.work / "keel.json", bench.work / "keel.rusage"
    cmd = ["/usr/bin/time", "-o", str(usage), "-f", "%U %S %M", sys.executable, "-m", "fabric",
           "deploy", "--inventory", str(bench.inv), "--extra-vars", pv.LOGIN, "--stats",
           "--json", str(js), *([] if persist else ["--no-persist"])]
    took = bl.timed(cmd, log_path=bench.logs / f"keel-{label}.log")
    user, system, rss = usage.read_text().split()[-3:]
    host = next(iter(json.loads(js.read_text())["hosts"].values()))
    if host["changed"]:
        log(f"WARNING: keel no-change run {label} changed {host['changed']}")
    return took, float(user) + float(system), int(rss), host["round_trips"]


def relayed_inventory(bench: pv.Bench, direct: Path, relay: Relay, path: Path) -> None:
    """The inventory ``direct`` with its host behind ``relay`` (and a known_hosts line for it)."""
    inv = yaml.safe_load(direct.read_text())
    hosts = inv["all"]["children"]["app"]["hosts"]
    name, host = next(iter(hosts.items()))
    known = [ln for ln in Path(bench.lab.known_hosts).read_text().splitlines()
             if ln.split(" ", 1)[0] == host["ansible_host"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    kh = path.parent / "known_hosts_relay"
    lines = "".join(f"[127.0.0.1]:{relay.port} {ln.split(' ', 1)[1]}\n" for ln in known)
    kh.write_text(lines)
    with Path(bench.lab.known_hosts).open("a") as fh:  # pyinfra's inventory names the lab's file
        fh.write(lines)
    relayed = copy.deepcopy(inv)
    relayed["all"]["children"]["app"]["hosts"][name] = {
        **host, "ansible_host": "127.0.0.1", "ansible_port": relay.port,
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes"}
    link = path.parent / "group_vars"
    if not link.exists():
        link.symlink_to(direct.parent / "group_vars")
    path.write_text(yaml.safe_dump(relayed))


def wait_kept(port: int, timeout: float = 60) -> bool:
    """Until keel's control process for the relay's ``port`` serves (it connects in the background)."""
    from keel import control

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.get("port") == port and c["serving"] for c in control.running()):
            return True
        time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays-ms", default="0,10,20,25,50",
                        help="one-way delays in ms (RTT 0, 20, 40, 50 and 100 ms)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lab", default="krtb", help="lab name (not another bench's)")
    parser.add_argument("--subnet", default="10.83.17.0/24")
    args = parser.parse_args()
    bl.LAB_NAME, bl.LAB_SUBNET = args.lab, args.subnet
    delays = [float(d) / 1000 for d in args.delays_ms.split(",")]
    bins = {"ansible": bl.ensure_venv("ansible"), "pyinfra": bl.ensure_venv("pyinfra")}
    work = bl.WORK / f"latency-{args.lab}"
    work.mkdir(parents=True, exist_ok=True)
    # keel's bytecode, as a user's first run leaves it (PYTHONDONTWRITEBYTECODE would
    # otherwise make every timed run compile keel again); its kept connections in a
    # directory of the bench's own, ended at the end.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "keel", "roles", "fabfile.py"],
                   cwd=bl.ROOT, check=True)
    control_dir = work / "control"
    control_dir.mkdir(mode=0o700, exist_ok=True)
    os.environ.update(KEEL_CONTROL_DIR=str(control_dir), KEEL_CONTROL_PERSIST="600")
    from keel import control
    samples: dict[str, Any] = {"wall": {}, "turns": {}, "keel_rt": {}, "keel_cpu": {},
                               "keel_rss_kib": {}, "load": []}
    with bl.lab_session() as lab, _ending(control, control_dir):
        bench = pv.Bench(lab, bins, work)
        bl.fresh_hosts(lab, 1, bench.inv)
        bench.prepare_vars()
        bench.run(pv.KEEL, 1, "fresh")
        bench.run(pv.KEEL, 1, "nochange-trace")  # leaves the probe trace a no-change run reads
        for tool in (pv.ANS_PIPE, pv.PYINFRA):
            bench.run(tool, 1, "takeover")
        direct_inv = bench.inv
        for delay in delays:
            key = f"{delay * 2000:g}"  # RTT in ms
            with Relay((lab.hosts()[0].address, 22), delay) as relay:
                bench.inv = work / "inv-relay" / "lab.yml"
                relayed_inventory(bench, direct_inv, relay, bench.inv)
                samples["load"].append(bl.load_now())
                # A first run connects and leaves the connection for the next ones (not timed).
                keel_nochange(bench, f"prime-rtt{key}")
                if not wait_kept(relay.port):
                    log("WARNING: no kept connection: keel runs will connect on their own")
                for _ in range(args.runs):
                    for tool in TOOLS:
                        relay.reset()
                        if tool in KEEL_TOOLS:
                            took, cpu, rss, rt = keel_nochange(bench, f"nochange-rtt{key}",
                                                               persist=tool == pv.KEEL)
                            for name, value in (("keel_cpu", cpu), ("keel_rss_kib", rss),
                                                ("keel_rt", rt)):
                                samples[name].setdefault(key, {}).setdefault(tool, []).append(value)
                        else:
                            took = bench.run(tool, 1, f"nochange-rtt{key}")
                        turns, _ = relay.reset()
                        samples["wall"].setdefault(key, {}).setdefault(tool, []).append(took)
                        samples["turns"].setdefault(key, {}).setdefault(tool, []).append(turns)
                        log(f"  RTT {key} ms {tool}: {took:.2f} s, {turns} round trips")
                samples["load"][-1] += " .. " + bl.load_now()
                control.stop_all(control_dir)
            bench.inv = direct_inv
    out = {"delays_ms_one_way": [d * 1000 for d in delays], "runs": args.runs,
           "machine": bl.machine_info(), "versions": bl.tool_versions(bins), **samples}
    bl.save_json(bl.DOCS / "latency.json", out)
    rtts = list(samples["wall"])
    bl.plot({"kind": "line", "title": "no-change deploy, 1 host, wall time vs round-trip time",
             "xlabel": "RTT (ms)", "ylabel": "seconds (median)", "x": rtts,
             "series": {t: [bl.median(samples["wall"][k][t]) for k in rtts] for t in TOOLS}},
            bl.DOCS / "provision-latency.png")
    for k in rtts:
        row = {t: f"{bl.median(samples['wall'][k][t]):.2f}s/{bl.median(samples['turns'][k][t]):.0f}rt"
               for t in TOOLS}
        print(k, json.dumps(row))
    (bl.DOCS / "latency.md").write_text(report(out, " ".join(sys.argv[1:])))
    log(f"wrote {bl.DOCS / 'latency.md'}")


#: Issue 14's targets, at this RTT (ms): keel (kept connection) at most this many seconds,
#: and at least this many times faster than pyinfra.
TARGET_RTT, TARGET_S, TARGET_X = "50", 0.6, 10.0


def report(data: dict[str, Any], args: str) -> str:
    """``docs/bench/latency.md`` from a run's data: medians, ratios per round, the targets."""
    wall, turns = data["wall"], data["turns"]
    med = {k: {t: bl.median(v) for t, v in tools.items()} for k, tools in wall.items()}
    rows = []
    for k, m in med.items():
        rows.append([f"{k} ms", *(f"{m[t]:.2f} s, {bl.median(turns[k][t]):.0f}" for t in TOOLS),
                     f"{m[pv.ANS_PIPE] / m[pv.KEEL]:.1f}x", f"{m[pv.PYINFRA] / m[pv.KEEL]:.1f}x",
                     f"{m[pv.PYINFRA] / m[KEEL_COLD]:.1f}x"])
    cpu = [[f"{k} ms", *(f"{bl.median(data['keel_cpu'][k][t]):.2f} CPU-s, "
                         f"{bl.median(data['keel_rss_kib'][k][t]) / 1024:.1f} MiB, "
                         f"{bl.median(data['keel_rt'][k][t]):.0f}" for t in KEEL_TOOLS)]
           for k in wall]
    lines = [
        "# Latency: no-change deploy of one host over a delaying relay",
        "",
        f"Written by `bench/latency.py {args}` (raw data: `latency.json`, plot:",
        "`provision-latency.png`). One lab host converged by keel and taken over once by",
        "Ansible (pipelining, ControlPersist=600s) and pyinfra; then per RTT, rounds of one",
        "no-change run of each tool side by side, all through `bench/relay.py` (user space,",
        "the delay added each way). keel runs on the SSH connection its previous run kept",
        "(600 s here, as Ansible's) and with `--no-persist`. Wall time of the whole command,",
        "start-up included; round trips as the relay counted them (the SSH handshake",
        "included; on a kept connection also the control process opening the next run's",
        "channel, which nothing waits for).",
        "",
        bl.md_kv({**data["machine"], **data["versions"],
                  "load average per RTT (start .. end)": "; ".join(data["load"])}),
        "",
        "## Medians, round trips and ratios",
        "",
        bl.md_table(["RTT", "keel, kept connection", "keel, new connection", "Ansible (pipelining)",
                     "pyinfra", "Ansible ÷ keel", "pyinfra ÷ keel", "pyinfra ÷ keel (new)"], rows),
        "",
        "keel's fab process per run (medians: user + sys CPU seconds and peak RSS from",
        "getrusage, start-up included; round trips by `--stats`):",
        "",
        bl.md_table(["RTT", "kept connection", "new connection"], cpu),
        "",
        "## Every round",
        "",
    ]
    for k in wall:
        rounds = list(zip(wall[k][pv.KEEL], wall[k][KEEL_COLD], wall[k][pv.ANS_PIPE],
                          wall[k][pv.PYINFRA], strict=True))
        lines += [f"RTT {k} ms:", "", bl.md_table(
            ["round", "keel, kept", "keel, new", "Ansible", "pyinfra", "pyinfra ÷ keel"],
            [[i + 1, *(f"{x:.2f} s" for x in r), f"{r[3] / r[0]:.1f}x"]
             for i, r in enumerate(rounds)]), ""]
    if TARGET_RTT in med:
        m, w = med[TARGET_RTT], wall[TARGET_RTT]
        within = sum(1 for x in w[pv.KEEL] if x <= TARGET_S)
        ahead = sum(1 for a, b in zip(w[pv.KEEL], w[pv.PYINFRA], strict=True) if b / a >= TARGET_X)
        n = len(w[pv.KEEL])
        ok_s, ok_x = m[pv.KEEL] <= TARGET_S, m[pv.PYINFRA] / m[pv.KEEL] >= TARGET_X
        lines += [
            f"## Targets at {TARGET_RTT} ms RTT (issue 14)", "",
            f"- keel ≤ {TARGET_S} s: {'met' if ok_s else 'missed'} ({m[pv.KEEL]:.2f} s median on a "
            f"kept connection; {within} of {n} rounds within it; new connection "
            f"{m[KEEL_COLD]:.2f} s).",
            f"- ≥ {TARGET_X:g}x faster than pyinfra: {'met' if ok_x else 'missed'} "
            f"({m[pv.PYINFRA] / m[pv.KEEL]:.1f}x as a ratio of medians; {ahead} of {n} rounds "
            f"at {TARGET_X:g}x or more).", ""]
    return "\n".join(lines)


class _ending:
    """Ends the bench's kept connections however the run ends."""

    def __init__(self, control: Any, directory: Path) -> None:
        self.control, self.directory = control, directory

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.control.stop_all(self.directory)


if __name__ == "__main__":
    sys.exit(main())
