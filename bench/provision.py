"""Provisioning benchmark: keel's ``fab deploy`` vs Ansible vs pyinfra on kbench lab hosts.

Every tool logs in as the lab's initial user ``debian`` (keel: ``--extra-vars
'{"deploy_user": "debian"}'``), so each fresh converge starts from a host exactly as
the lab boots it, with nothing bootstrapped. Each tool's fresh converge gets freshly
created hosts; its no-change runs follow on the hosts it converged. The 20-host case
converges once with keel (one fresh run), lets Ansible and pyinfra take the same hosts
over, then times no-change runs of all three. Writes docs/bench/provision.md and PNGs.

    .venv/bin/python bench/provision.py            # 1, 5, 20 hosts
    .venv/bin/python bench/provision.py --quick    # 1 and 5 hosts, fewer runs
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import benchlib as bl
from benchlib import log

from keel.connection import Connection  # benchlib puts the project on sys.path
from keel.facts import gather
from keel.inventory import Inventory
from keel.ops.files import TREE_MARKER, _walk, tree_digest
from keel.ops.python import PIP_INSTALL_FLAGS, requirements_key
from roles import apps, nginx, python
from roles.app import IMPORT_CHECK  # the very check keel's app role runs

KEEL = "keel"
ANS_DEF = "ansible (default)"
ANS_PIPE = "ansible (pipelining)"
PYINFRA = "pyinfra"
HAND = "hand-run apt + pip"
TOOLS = [KEEL, ANS_DEF, ANS_PIPE, PYINFRA]
LOGIN = json.dumps({"deploy_user": "debian"})


class Bench:
    """One benchmark run: tool venvs, work files, and every sample measured."""

    def __init__(self, lab: Any, bins: dict[str, Path], work: Path, others_up_to: int = 0) -> None:
        self.lab = lab
        #: Ansible and pyinfra run only up to this many hosts (0: always).
        self.others_up_to = others_up_to
        self.bins = bins
        self.work = work
        self.inv = work / "inv" / "lab.yml"
        self.logs = work / "logs"
        self.vars_path = work / "vars.json"
        self.vars: dict[str, Any] = {}
        self.samples: dict[str, Any] = {"fresh": {}, "nochange": {}, "keel_rt": {},
                                        "keel_engine_s": {}, "takeover": {}, "floor": {}}

    # ------------------------------------------------------------- vars
    def prepare_vars(self) -> None:
        """Resolve keel's app dict for these hosts and write it for Ansible and pyinfra."""
        spec = Inventory.load(self.inv).hosts()[0]
        conn = Connection.open(spec)
        try:
            facts = gather(conn)
        finally:
            conn.close()
        variables = {**apps.DEFAULTS, **nginx.DEFAULTS, **python.DEFAULTS, **spec.vars,
                     "project_dir": str(bl.ROOT)}

        fake = SimpleNamespace(name=spec.name, vars=variables, facts=facts)  # what resolve reads
        app = apps._resolve_one(fake, variables["apps"][0], True)  # type: ignore[arg-type]
        v = app["venv"]
        reqs = app["requirements_text"]
        want = requirements_key(reqs)
        venv_script = (
            f"set -e; rm -rf {v}; python3 -m venv {v}; "
            f"printf '%s' {shlex.quote(reqs)} > {v}/requirements.txt; "
            f"{v}/bin/pip install {PIP_INSTALL_FLAGS} -r {v}/requirements.txt; "
            f"chown -R root:root {v}; "
            'i=$(readlink -f "$(command -v python3)"); '
            f'echo "{want} $i $(stat -c %s:%Y "$i") root:root" > {v}/.keel-venv'
        )
        key = hashlib.sha256(f"{v} {app['module']}".encode()).hexdigest()[:12]
        import_marker = f"{app['release_dir']}/.bench-import-ok-{key}"
        pre_marker = f"{app['release_dir']}/.bench-pre-start-0"
        check = f"python -c {shlex.quote(IMPORT_CHECK)} {shlex.quote(app['module'])}"
        tarball = self.work / f"release-{app['release']}.tar.gz"
        tarball.write_bytes(_release_tarball(Path(app["source"]), app["release"],
                                             v.rsplit("/", 1)[1]))
        self.vars = {
            "app": app,
            "nginx_group": variables["nginx_group"],
            "python_packages": variables["python_packages"],
            "nginx_packages": variables["nginx_packages"],
            "keel_templates": str(bl.ROOT / "templates"),
            "venv_script": venv_script,
            "release_tarball": str(tarball),
            "import_check_cmd": as_app_user(app, check) + f" && touch {import_marker}",
            "import_check_marker": import_marker,
            "pre_start_cmd": as_app_user(app, app["pre_start"][0])
            + f" && touch {pre_marker}",
            "pre_start_marker": pre_marker,
            "nginx_validate": "/bin/sh -c "
            + shlex.quote(nginx.site_validate(app["name"]).replace("%s", '"$1"')) + " sh %s",
        }
        bl.save_json(self.vars_path, self.vars)

    def write_pyinfra_inventory(self) -> Path:
        specs = Inventory.load(self.inv).hosts()
        rows = []
        for s in specs:
            data = {"ssh_hostname": s.address, "ssh_port": s.port or 22, "ssh_user": "debian",
                    "ssh_key": str(self.lab.key_file),
                    "ssh_known_hosts_file": str(self.lab.known_hosts),
                    "ssh_strict_host_key_checking": "yes", "_sudo": True}
            rows.append(f"    ({s.name!r}, {data!r}),")
        path = self.work / "pyinfra_inventory.py"
        path.write_text("app = [\n" + "\n".join(rows) + "\n]\n")
        return path

    # ------------------------------------------------------------- tools
    def run(self, tool: str, n: int, label: str) -> float:
        """One converge of ``tool`` on all lab hosts; returns wall seconds."""
        logf = self.logs / f"{tool.split()[0]}-{label}.log"
        if tool == KEEL:
            js = self.work / "keel.json"
            took = bl.timed([sys.executable, "-m", "fabric", "deploy", "--inventory", str(self.inv),
                             "--extra-vars", LOGIN, "--parallel", str(n), "--stats",
                             "--json", str(js)], log_path=logf)
            doc = json.loads(js.read_text())["hosts"]
            changed = sum(h["changed"] for h in doc.values())
            if label.startswith("nochange"):
                self.samples["keel_rt"].setdefault(n, []).extend(h["round_trips"] for h in doc.values())
                self.samples["keel_engine_s"].setdefault(n, []).append(
                    max(h["seconds"] for h in doc.values()))
        elif tool in (ANS_DEF, ANS_PIPE):
            variant = "default" if tool == ANS_DEF else "pipelining"
            env = {"ANSIBLE_CONFIG": str(bl.BENCH / "ansible" / f"ansible-{variant}.cfg"),
                   "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.work / f"cp-{variant}"),
                   "ANSIBLE_NOCOLOR": "1"}
            took = bl.timed([str(self.bins["ansible"] / "ansible-playbook"), "-i", str(self.inv),
                             str(bl.BENCH / "ansible" / "deploy.yml"), "-e", f"@{self.vars_path}",
                             "-f", str(n)], env=env, log_path=logf)
            text = logf.read_text().rsplit("$ ", 1)[-1]
            changed = sum(int(c) for c in re.findall(r"changed=(\d+)", text))
        elif tool == PYINFRA:
            inv = self.write_pyinfra_inventory()
            took = bl.timed([str(self.bins["pyinfra"] / "pyinfra"), str(inv),
                             str(bl.BENCH / "pyinfra" / "deploy.py"), "-y", "--parallel", str(n)],
                            env={"KEEL_BENCH_VARS": str(self.vars_path), "NO_COLOR": "1"},
                            cwd=self.work, log_path=logf)
            text = logf.read_text().rsplit("$ ", 1)[-1]
            total = re.search(r"Grand total\s+\d+\s+(\S+)", text)
            changed = int(total.group(1)) if total and total.group(1).isdigit() else 0
        else:
            raise ValueError(tool)
        if label.startswith("nochange") and changed:
            log(f"WARNING: {tool} no-change run {label} reported {changed} change(s); see {logf}")
        log(f"{tool:22s} {label:16s} {n:2d} host(s): {took:7.2f} s (changed {changed})")
        return took

    def hand(self) -> float:
        """The same apt and pip commands as a fresh deploy, by hand over one SSH session."""
        host = self.lab.hosts()[0]
        t0 = time.monotonic()
        bl.ssh(self.lab, host.address, hand_script(self.vars['app']['requirements_text']),
               timeout=1200)
        took = time.monotonic() - t0
        log(f"{HAND:22s} fresh             1 host(s): {took:7.2f} s")
        return took

    # ---------------------------------------------------------- phases
    def tools(self, n: int) -> list[str]:
        """The tools measured on ``n`` hosts."""
        return TOOLS if not self.others_up_to or n <= self.others_up_to else [KEEL]

    def fresh_and_nochange(self, n: int, rounds: int, runs: int) -> None:
        """Per round, per tool: new hosts, a fresh converge, then ``runs`` no-change runs."""
        for r in range(rounds):
            for tool in [*self.tools(n), *([HAND] if n == 1 else [])]:
                log(f"--- {n} host(s), round {r + 1}/{rounds}: {tool} on new hosts")
                bl.fresh_hosts(self.lab, n, self.inv)
                if not self.vars:
                    self.prepare_vars()
                if tool == HAND:
                    self.samples["fresh"].setdefault(n, {}).setdefault(tool, []).append(self.hand())
                    continue
                took = self.run(tool, n, f"fresh-r{r}")
                self.samples["fresh"].setdefault(n, {}).setdefault(tool, []).append(took)
                for i in range(runs):
                    took = self.run(tool, n, f"nochange-r{r}-{i}")
                    self.samples["nochange"].setdefault(n, {}).setdefault(tool, []).append(took)

    def shared_hosts(self, n: int, runs: int) -> None:
        """Keel converges ``n`` new hosts once; each tool then takes over and runs no-change."""
        log(f"--- {n} hosts: one fresh keel converge, then every tool on the same hosts")
        bl.fresh_hosts(self.lab, n, self.inv)
        if not self.vars:
            self.prepare_vars()
        self.samples["fresh"].setdefault(n, {})[KEEL] = [self.run(KEEL, n, "fresh")]
        for tool in self.tools(n):
            if tool != KEEL and tool != ANS_PIPE:  # one takeover per tool (pipelining: same hosts)
                self.samples["takeover"][tool] = self.run(tool, n, "takeover")
            for i in range(runs):
                took = self.run(tool, n, f"nochange-{i}")
                self.samples["nochange"].setdefault(n, {}).setdefault(tool, []).append(took)

    def floor(self, samples: int = 200) -> None:
        """One SSH round trip on an open connection (paramiko), with and without TCP_NODELAY."""
        import paramiko

        host = self.lab.hosts()[0]
        for nodelay in (True, False):
            client = paramiko.SSHClient()
            client.load_host_keys(str(self.lab.known_hosts))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(host.address, username="debian", key_filename=str(self.lab.key_file),
                           look_for_keys=False, allow_agent=False, timeout=10)
            transport = client.get_transport()
            assert transport is not None
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
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
            chan.close()
            client.close()
            key = "TCP_NODELAY" if nodelay else "Nagle (no TCP_NODELAY)"
            self.samples["floor"][key] = bl.median(times)
            log(f"round trip floor, {key}: {bl.median(times) * 1000:.2f} ms")




def as_app_user(app: dict[str, Any], cmd: str) -> str:
    """``cmd`` in the release as the app user, with its env file and venv (as keel runs it)."""
    q = shlex.quote
    inner = (f"set -a; . {q(app['env_file'])}; set +a; "
             f"export APP_STATE_DIR={q(app['state_dir'])} APP_RELEASE={q(app['release'])} "
             f"PATH={q(app['venv'] + '/bin')}:$PATH; {cmd}")
    return f"runuser -u {q(app['user'])} -- sh -c {q(inner)}"


def hand_script(requirements: str) -> str:
    """bench/hand.sh with the app's requirements and keel's own pip flags."""
    return (f"REQUIREMENTS={shlex.quote(requirements)}\nPIP_FLAGS={shlex.quote(PIP_INSTALL_FLAGS)}\n"
            + (bl.BENCH / "hand.sh").read_text())


def breakdown(lab: Any, work: Path, hand_too: bool = True) -> str:
    """Where a fresh ``fab deploy`` spends its time: every round trip timed, in-process.

    Runs the real CLI (``fabric.main.program``) with ``Connection.run`` wrapped, on a new
    host, then the hand-run commands on another new host. Returns a markdown section.
    """
    import os

    from fabric.main import program

    from keel import connection

    inv = work / "inv-breakdown" / "lab.yml"
    bl.fresh_hosts(lab, 1, inv)
    trips: list[tuple[float, str]] = []
    original = connection.Connection.run

    def timed_run(self: Any, script: str, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, script, *a, **kw)
        finally:
            trips.append((time.perf_counter() - t0, _label(script)))

    connection.Connection.run = timed_run  # type: ignore[method-assign]
    os.chdir(bl.ROOT)
    t0 = time.perf_counter()
    try:
        program.run(["fab", "deploy", "--inventory", str(inv), "--extra-vars", LOGIN], exit=False)
    finally:
        connection.Connection.run = original  # type: ignore[method-assign]
    total = time.perf_counter() - t0
    hand = None
    if hand_too:
        bl.fresh_hosts(lab, 1, inv)
        host = lab.hosts()[0]
        app_reqs = (bl.ROOT / "app" / "requirements.txt").read_text().rstrip("\n")
        reqs = app_reqs + f"\nuwsgi=={apps.APP_DEFAULTS['uwsgi_version']}\n"
        t1 = time.monotonic()
        bl.ssh(lab, host.address, hand_script(reqs), timeout=1200)
        hand = time.monotonic() - t1
    top = sorted(trips, reverse=True)[:12]
    in_trips = sum(t for t, _ in trips)
    rows = [[f"{t:.2f} s", f"`{label}`"] for t, label in top]
    lines = ["## Where a fresh `fab deploy` spends its time (1 host)", "",
             f"`fab deploy` run in-process with every round trip timed: {total:.1f} s in all, "
             f"{in_trips:.1f} s inside {len(trips)} round trips, "
             f"{total - in_trips:.1f} s elsewhere (start-up, connect, Python)."
             + (f" The hand-run apt + pip commands took {hand:.1f} s on another new host "
                f"(ratio {total / hand:.2f}x)." if hand else ""), "",
             bl.md_table(["seconds", "round trip (first command)"], rows), ""]
    return "\n".join(lines)


def _label(script: str) -> str:
    """A short name for a script: its first substantial line, trimmed."""
    for line in script.strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("set -e", "#", "t=$(mktemp", "trap ")):
            return (line[:90] + "...") if len(line) > 90 else line
    return "?"


def _release_tarball(source: Path, release: str, venv_key: str) -> bytes:
    """keel's release as a tarball: ``<release>/...``, its ``.keel-tree`` digest, ``RELEASE``
    and the ``.venv`` link to the venv (what keel's app role writes into a release)."""
    buf = io.BytesIO()
    digest = tree_digest(source).encode() + b"\n"
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in _walk(source, ()):
            info = tar.gettarinfo(str(path), arcname=f"{release}/{path.relative_to(source).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
        for name, data in ((TREE_MARKER, digest), ("RELEASE", release.encode() + b"\n")):
            info = tarfile.TarInfo(f"{release}/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(f"{release}/.venv")
        info.type, info.linkname = tarfile.SYMTYPE, f"../../venvs/{venv_key}"
        tar.addfile(info)
    return buf.getvalue()


# ---------------------------------------------------------------- report
def report(b: Bench, info: dict[str, str], versions: dict[str, str], args: argparse.Namespace,
           counts: list[int], started: float) -> str:
    s = b.samples
    fresh, nc = s["fresh"], s["nochange"]
    out = ["# Provisioning benchmark", "",
           f"`bench/provision.py{' --quick' if args.quick else ''}`: keel's `fab deploy` vs the "
           "same deploy as an Ansible playbook (`bench/ansible/deploy.yml`) and a pyinfra deploy "
           "(`bench/pyinfra/deploy.py`), on kbench lab hosts (systemd-nspawn, fresh like new "
           "VMs). Wall time of the whole command (interpreter start included), median of the "
           "runs; ratios are tool ÷ keel from this same run (> 1x means keel is faster).", "",
           "All tools log in as `debian` (the lab's initial sudo user): keel with "
           "`--extra-vars '{\"deploy_user\": \"debian\"}'`, so nothing is bootstrapped and "
           "every fresh converge starts from the host exactly as the lab boots it. "
           "Parallelism = number of hosts for every tool (keel `--parallel N`, Ansible `-f N`, "
           "pyinfra `--parallel N`).", "",
           "## Machine and versions", "", bl.md_kv({**info, **versions,
                                                   "wall time of this benchmark":
                                                   f"{(time.monotonic() - started) / 60:.1f} min",
                                                   "load average at end": bl.load_now()}),
           ""]
    out += ["## No-change converge", ""]
    rows = []
    for n in counts:
        if n not in nc:
            continue
        base = bl.median(nc[n].get(KEEL, []))
        for tool in TOOLS:
            vals = nc[n].get(tool, [])
            if not vals:
                continue
            rows.append([n, tool, len(vals), bl.fmt_s(bl.median(vals)),
                         bl.fmt_s(min(vals) if vals else None),
                         "1.00x" if tool == KEEL else bl.fmt_x(bl.median(vals) / base)])
    out += [bl.md_table(["hosts", "tool", "runs", "median", "min", "tool ÷ keel"], rows), ""]
    out += [f"![no-change]({args.report}-nochange.png)", "", "## Fresh converge", ""]
    rows = []
    for n in counts:
        if n not in fresh:
            continue
        base = bl.median(fresh[n].get(KEEL, []))
        for tool in [*TOOLS, HAND]:
            vals = fresh[n].get(tool, [])
            if vals:
                rows.append([n, tool, len(vals), bl.fmt_s(bl.median(vals)),
                             "1.00x" if tool == KEEL else bl.fmt_x(bl.median(vals) / base)])
    out += [bl.md_table(["hosts", "tool", "runs", "median", "tool ÷ keel"], rows), ""]
    out += [f"![fresh]({args.report}-fresh.png)", ""]
    if s["takeover"]:
        out += ["Taking over the 20 hosts keel had converged (not a fresh converge; shown "
                "for completeness): " + ", ".join(f"{t} {bl.fmt_s(v)}" for t, v in
                                                  s["takeover"].items()) + ".", ""]
    out += ["## SSH round trips (keel, no-change)", ""]
    rows = []
    for n, rts in sorted(s["keel_rt"].items()):
        eng = bl.median(s["keel_engine_s"].get(n, []))
        rows.append([n, bl.median(rts), bl.fmt_s(eng)])
    out += [bl.md_table(["hosts", "round trips per host (median)",
                         "engine seconds, slowest host (median)"], rows), ""]
    if s["floor"]:
        out += [bl.md_table(["floor: one SSH round trip on an open connection (paramiko)",
                             "median"],
                            [[k, f"{v * 1000:.2f} ms"] for k, v in s["floor"].items()]), ""]
    out += ["## Goals", "", *goals(b, counts), ""]
    out += ["## How to run", "", "```sh", ".venv/bin/python bench/provision.py --quick",
            ".venv/bin/python bench/provision.py", "```", "",
            f"Raw samples: `docs/bench/{args.report}.json`. Tool logs: "
            f"`{b.logs}` (not kept).", ""]
    return "\n".join(out)


def goals(b: Bench, counts: list[int]) -> list[str]:
    s = b.samples
    nc, fresh = s["nochange"], s["fresh"]
    lines = []

    def line(ok: bool | None, text: str) -> str:
        mark = "met" if ok else ("missed" if ok is not None else "not measured")
        return f"- **{mark}**: {text}"

    k1 = bl.median(nc.get(1, {}).get(KEEL, []))
    a1 = bl.median(nc.get(1, {}).get(ANS_PIPE, []))
    p1 = bl.median(nc.get(1, {}).get(PYINFRA, []))
    if k1 == k1:
        lines.append(line(a1 / k1 >= 3, f"no-change, 1 host, ≥ 3x faster than Ansible with "
                                        f"pipelining: {a1 / k1:.2f}x ({bl.fmt_s(a1)} vs {bl.fmt_s(k1)})"))
        lines.append(line(p1 / k1 >= 1.5, f"no-change, 1 host, ≥ 1.5x faster than pyinfra: "
                                          f"{p1 / k1:.2f}x ({bl.fmt_s(p1)} vs {bl.fmt_s(k1)})"))
        lines.append(line(k1 <= 0.7, f"no-change `fab deploy` ≤ 0.7 s wall: {bl.fmt_s(k1)}"))
    big = max(n for n in counts if n in nc) if nc else 0
    if big > 1 and k1 == k1:
        kb = bl.median(nc[big].get(KEEL, []))
        lines.append(line(kb <= 2 * k1, f"{big} hosts no-change ≤ 2x the 1-host time: "
                                        f"{kb / k1:.2f}x ({bl.fmt_s(kb)} vs {bl.fmt_s(k1)})"))
    kf = bl.median(fresh.get(1, {}).get(KEEL, []))
    hf = bl.median(fresh.get(1, {}).get(HAND, []))
    if kf == kf and hf == hf:
        lines.append(line(kf <= 1.15 * hf, f"fresh converge (1 host) within 1.15x of the "
                                           f"hand-run commands: {kf / hf:.2f}x ({bl.fmt_s(kf)} vs "
                                           f"{bl.fmt_s(hf)})"))
    return lines


def plots(b: Bench, counts: list[int], name: str) -> None:
    nc, fresh = b.samples["nochange"], b.samples["fresh"]
    xs = [n for n in counts if n in nc]
    bl.plot({"kind": "bar", "title": "No-change converge (median wall time, log scale)", "x": xs,
             "log": True,
             "xlabel": "hosts", "ylabel": "seconds",
             "series": {t: [bl.median(nc[n].get(t, [])) for n in xs] for t in TOOLS}},
            bl.DOCS / f"{name}-nochange.png")
    xs = [n for n in counts if n in fresh]
    bl.plot({"kind": "bar", "title": "Fresh converge (median wall time)", "x": xs,
             "xlabel": "hosts", "ylabel": "seconds",
             "series": {t: [(bl.median(fresh[n][t]) if fresh[n].get(t) else None) for n in xs]
                        for t in [*TOOLS, HAND]}},
            bl.DOCS / f"{name}-fresh.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 and 5 hosts, one fresh round")
    p.add_argument("--hosts", help="comma-separated host counts (default 1,5,20; quick 1,5)")
    p.add_argument("--rounds", type=int, help="fresh rounds on 1 host (default 3; quick 1)")
    p.add_argument("--rounds-multi", type=int, default=1,
                   help="fresh rounds on 5 hosts (default 1: a 5-host round takes ~15 min)")
    p.add_argument("--runs", type=int, default=3, help="no-change runs per fresh round (default 3)")
    p.add_argument("--breakdown", action="store_true",
                   help="only time each round trip of one fresh fab deploy (and the hand-run "
                        "commands) and write docs/bench/provision-breakdown.md")
    p.add_argument("--others-up-to", type=int, default=0,
                   help="run Ansible and pyinfra only up to this many hosts (default: always)")
    p.add_argument("--report", default="provision",
                   help="name of the report files in docs/bench (default provision)")
    args = p.parse_args()
    counts = [int(x) for x in (args.hosts or ("1,5" if args.quick else "1,5,20")).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.monotonic()
    if args.breakdown:
        work = bl.WORK / "provision"
        work.mkdir(parents=True, exist_ok=True)
        with bl.lab_session() as lab:
            text = breakdown(lab, work)
        info = bl.machine_info()
        out = "\n".join(["# Fresh converge breakdown", "", bl.md_kv(info), "", text,
                          "Run: `.venv/bin/python bench/provision.py --breakdown`.", ""])
        (bl.DOCS / "provision-breakdown.md").write_text(out)
        print(out)
        return
    bins = {"ansible": bl.ensure_venv("ansible"), "pyinfra": bl.ensure_venv("pyinfra")}
    # keel's own bytecode, as a user's first run leaves it (pip already compiled the
    # tools' and the libraries'); PYTHONDONTWRITEBYTECODE would otherwise make every
    # timed run compile keel again.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "keel", "roles", "fabfile.py"],
                   cwd=bl.ROOT, check=True)
    bl.ensure_venv("plot")
    info = bl.machine_info()
    versions = bl.tool_versions(bins)
    work = bl.WORK / "provision"
    work.mkdir(parents=True, exist_ok=True)
    with bl.lab_session() as lab:
        b = Bench(lab, bins, work, args.others_up_to)
        try:
            for n in counts:
                if n >= 20:
                    b.shared_hosts(n, args.runs)
                else:
                    b.fresh_and_nochange(n, rounds if n == 1 else args.rounds_multi, args.runs)
            b.floor()
            versions.update(host_versions(lab))
        finally:
            bl.save_json(bl.DOCS / f"{args.report}.json", {"info": info, "versions": versions,
                                                          "samples": b.samples})
    text = report(b, info, versions, args, counts, started)
    (bl.DOCS / f"{args.report}.md").write_text(text)
    plots(b, counts, args.report)
    print(text)


def host_versions(lab: Any) -> dict[str, str]:
    """nginx and uWSGI versions on the (last) converged lab host."""
    host = lab.hosts()[0]
    res = bl.ssh(lab, host.address, "nginx -v 2>&1; for u in /srv/hello/venvs/*/bin/uwsgi; do "
                                    "echo uwsgi/$($u --version); break; done", check=False)
    words = res.stdout.split()
    found = {w.split("/")[0]: w.split("/", 1)[1] for w in words if w.startswith(("nginx/", "uwsgi/"))}
    return {"nginx (lab host)": found.get("nginx", "?"), "uwsgi (lab host)": found.get("uwsgi", "?")}


if __name__ == "__main__":
    main()
