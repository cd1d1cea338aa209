"""Facts: what a host is, read in one round trip at the start of a run.

Example::

    facts = gather(conn)
    facts.cpu_count        # 2
    facts.os_codename      # "bookworm"
    facts.pending_handlers # ["reload nginx"], left by a run that failed
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keel.connection import CommandResult, Connection

STATE_DIR = "/var/lib/keel"
PENDING_HANDLERS = f"{STATE_DIR}/pending-handlers"

# Shell builtins where they do, and what the python agent puts in the environment
# (KEEL_CPU_COUNT, KEEL_ARCH, KEEL_PYTHON_VERSION): no process started under it but
# the script's own sh, the first thing every run waits for. The commands remain for
# the sh agent.

FACTS_SCRIPT = f"""
. /etc/os-release 2>/dev/null
echo "os_id=$ID"
echo "os_version=$VERSION_ID"
echo "os_codename=$VERSION_CODENAME"
read -r h 2>/dev/null </proc/sys/kernel/hostname || h=$(hostname); echo "hostname=$h"
echo "cpu_count=${{KEEL_CPU_COUNT:-$(nproc 2>/dev/null || echo 1)}}"
m=0; while read -r k v _; do [ "$k" = MemTotal: ] && m=$v && break; done </proc/meminfo
echo "mem_total_kb=$m"
v=${{KEEL_PYTHON_VERSION:-$(python3 -V 2>/dev/null)}}; echo "python_version=${{v#Python }}"
[ -d /run/systemd/system ] && echo systemd=yes || echo systemd=no
echo "arch=${{KEEL_ARCH:-$(uname -m)}}"
[ ! -f {PENDING_HANDLERS} ] ||
  while IFS= read -r l || [ -n "$l" ]; do echo "pending_handler=$l"; done <{PENDING_HANDLERS}
true
"""


@dataclass
class Facts:
    """Host facts. ``python_version`` is "" when python3 is absent."""

    os_id: str = ""
    os_version: str = ""
    os_codename: str = ""
    hostname: str = ""
    cpu_count: int = 1
    mem_total_kb: int = 0
    python_version: str = ""
    systemd: bool = False
    arch: str = ""
    pending_handlers: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Facts:
        facts = cls()
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "pending_handler":
                if value and value not in facts.pending_handlers:
                    facts.pending_handlers.append(value)
            elif key in ("cpu_count", "mem_total_kb"):
                setattr(facts, key, int(value or 0) or getattr(cls, key, 0))
            elif key == "systemd":
                facts.systemd = value == "yes"
            elif key in cls.__dataclass_fields__:
                setattr(facts, key, value)
        return facts


def gather(conn: Connection) -> Facts:
    res: CommandResult = conn.run(FACTS_SCRIPT)
    return Facts.parse(res.out)
