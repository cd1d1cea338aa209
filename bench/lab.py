"""Lab benchmark: image build time, host SSH-ready time, memory per idle host.

    .venv/bin/python bench/lab.py [--hosts 5] [--release bookworm]

Builds the base image from scratch in a throwaway lab dir (so the cached one
is not touched), then starts hosts one at a time and times each from
``lab.up`` to an SSH banner, and reads each idle host's memory from its
cgroup. Writes ``docs/bench/lab.md``. Uses its own lab name and subnet, and
tears everything down, even on failure.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import benchlib  # noqa: F401  (puts the project root on sys.path)

from keel.lab import Lab, ensure_image, memory_bytes

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench" / "lab.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--release", default="bookworm")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="keel-labbench-"))
    lab = Lab("kmeas", "10.83.12.0/24", root=root)
    try:
        t0 = time.monotonic()
        ensure_image(root, args.release)
        build = time.monotonic() - t0

        ready = []
        for n in range(1, args.hosts + 1):
            t0 = time.monotonic()
            lab.up(count=n, release=args.release)
            ready.append(time.monotonic() - t0)
        time.sleep(10)  # let boot-time jobs settle: measure idle hosts
        mem = [memory_bytes(h) or 0 for h in lab.hosts()]
    finally:
        lab.down()
        shutil.rmtree(root, ignore_errors=True)

    rows = [
        ("image build (mmdebstrap, from scratch)", f"{build:.1f} s"),
        (f"host SSH-ready, median of {len(ready)}", f"{statistics.median(ready):.2f} s"),
        ("host SSH-ready, min / max", f"{min(ready):.2f} s / {max(ready):.2f} s"),
        ("memory per idle host (cgroup), median", f"{statistics.median(mem) / 2**20:.0f} MiB"),
    ]
    machine = (f"{platform.node()}: {subprocess.getoutput('nproc')} CPUs, "
               f"kernel {platform.release()}, {time.strftime('%Y-%m-%d')}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        f"# Lab ({args.release})\n\n{machine}\n\n| measure | value |\n| --- | --- |\n"
        + "".join(f"| {k} | {v} |\n" for k, v in rows)
    )
    print(OUT.read_text())


if __name__ == "__main__":
    main()
