"""Shared helpers for the benchmarks: tool venvs, the kbench lab, timing, reports.

The bench scripts import this first; it puts the project root on ``sys.path``
so ``keel`` and ``roles`` import from the working tree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DOCS = ROOT / "docs" / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAB_NAME = "kbench"
LAB_SUBNET = "10.83.10.0/24"
WORK = Path(os.environ.get("KEEL_BENCH_WORK", "/tmp/keel-bench"))

# Tool venvs, created on first use from the pinned requirement files beside this module.
VENVS = {
    "ansible": (Path("/tmp/bench-ansible"), BENCH / "requirements-ansible.txt"),
    "pyinfra": (Path("/tmp/bench-pyinfra"), BENCH / "requirements-pyinfra.txt"),
    "plot": (Path("/tmp/bench-plot"), BENCH / "requirements-plot.txt"),
}


def log(msg: str) -> None:
    """One timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ venvs
def ensure_venv(name: str) -> Path:
    """Create (or refresh) the venv ``name`` from its pinned requirements; return its bin dir.

    Made from the interpreter that runs the bench (the controller venv's base, Debian's
    python3 after ``make setup``), so every tool runs on the same Python build.
    """
    path, reqs = VENVS[name]
    stamp = path / ".bench-requirements"
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    want = f"# python: {base}\n" + reqs.read_text()
    if stamp.exists() and stamp.read_text() == want:
        return path / "bin"
    log(f"creating venv {path} from {reqs.name} with {base}")
    subprocess.run([base, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "-r", str(reqs)], check=True, timeout=900)
    stamp.write_text(want)
    return path / "bin"


def ensure_wrk() -> str:
    """wrk from Debian's archive."""
    if not _which("wrk"):
        log("installing wrk (apt)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return "wrk"


def _which(cmd: str) -> bool:
    return any((Path(p) / cmd).exists() for p in os.environ.get("PATH", "").split(":"))


# -------------------------------------------------------------------- lab
class _Terminated(BaseException):
    """Raised from SIGTERM/SIGHUP so ``finally`` blocks (lab teardown) run."""


@contextlib.contextmanager
def lab_session() -> Iterator[Any]:
    """The kbench lab, always torn down at the end (errors, Ctrl-C, SIGTERM included)."""
    from keel.lab import Lab

    lab = Lab(LAB_NAME, LAB_SUBNET)

    def _raise(signum: int, _frame: Any) -> None:
        raise _Terminated(f"signal {signum}")

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    lab.down()  # leftovers of a killed earlier run
    try:
        yield lab
    finally:
        log("lab down")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip teardown
        try:
            lab.down()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for s, h in old.items():
                signal.signal(s, h)


def fresh_hosts(lab: Any, count: int, inventory: Path) -> list[Any]:
    """Replace every lab host by ``count`` new ones (fresh as new VMs); write the inventory."""
    from keel.lab import LabError

    lab.down()
    for attempt in range(3):  # a busy machine can make a boot miss the lab's 60 s timeout
        try:
            hosts = lab.up(count=count)
            break
        except LabError as exc:
            if attempt == 2:
                raise
            log(f"lab.up failed ({exc}); retrying")
    lab.write_inventory(inventory)
    link = inventory.parent / "group_vars"
    if not link.exists():
        link.symlink_to(ROOT / "inventory" / "group_vars")
    return hosts


def ssh_base(lab: Any, address: str, user: str = "debian") -> list[str]:
    """An OpenSSH command line for one lab host (batch mode, the lab's known_hosts)."""
    return ["ssh", "-i", str(lab.key_file), "-o", f"UserKnownHostsFile={lab.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            f"{user}@{address}"]


def ssh(lab: Any, address: str, script: str, user: str = "debian", timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``sudo sh`` on a lab host over one SSH session."""
    proc = subprocess.run([*ssh_base(lab, address, user), "sudo", "sh", "-s"], input=script,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ssh {address}: rc={proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


# ------------------------------------------------------------------ timing
def timed(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
          timeout: float = 1800, log_path: Path | None = None) -> float:
    """Wall time of one command; raise with its output tail if it fails."""
    t0 = time.monotonic()
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    took = time.monotonic() - t0
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n# rc={proc.returncode} {took:.3f}s\n"
                     f"{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        tail = (proc.stdout[-2500:] + "\n" + proc.stderr[-2500:]).strip()
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (rc={proc.returncode}):\n{tail}")
    return took


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(value: float | None) -> str:
    if value is None or value != value:  # NaN
        return "-"
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def fmt_x(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.2f}x"


# --------------------------------------------------------------- machine
def machine_info() -> dict[str, str]:
    """nproc, memory, kernel, load, date and the keel commit (with a dirty flag)."""
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
    commit = _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_release(),
        "python (controller)": platform.python_version(),
        "keel commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "load average at start": load_now(),
    }


def load_now() -> str:
    """The 1/5/15-minute load averages, to judge how busy the machine was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _os_release() -> str:
    text = Path("/etc/os-release").read_text()
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M)
    return m.group(1) if m else "?"


def _out(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def tool_versions(bins: dict[str, Path]) -> dict[str, str]:
    """Versions of the tools in use (only the ones whose venv is given)."""
    out: dict[str, str] = {}
    if "ansible" in bins:
        first = _out([str(bins["ansible"] / "ansible-playbook"), "--version"]).splitlines()[:1]
        out["ansible-core"] = re.sub(r".*\[core ([^\]]+)\].*", r"\1", first[0]) if first else "?"
    if "pyinfra" in bins:
        words = _out([str(bins["pyinfra"] / "pyinfra"), "--version"]).split()
        out["pyinfra"] = words[-1] if words else "?"
    import fabric
    import paramiko

    out["fabric"] = fabric.__version__
    out["paramiko"] = paramiko.__version__
    return out


# ------------------------------------------------------------------ report
def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def md_kv(info: dict[str, str]) -> str:
    return md_table(["what", "value"], list(info.items()))


def plot(spec: dict[str, Any], out: Path) -> None:
    """Draw a bar or line chart with matplotlib (Agg) in the plot venv; see ``bench/plot.py``."""
    bin_dir = ensure_venv("plot")
    spec_path = WORK / f"plot-{out.stem}.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    subprocess.run([str(bin_dir / "python"), str(BENCH / "plot.py"), str(spec_path), str(out)],
                   check=True, timeout=300)


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
