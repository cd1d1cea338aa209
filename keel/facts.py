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

FACTS_SCRIPT = f"""
. /etc/os-release 2>/dev/null
echo "os_id=$ID"
echo "os_version=$VERSION_ID"
echo "os_codename=$VERSION_CODENAME"
echo "hostname=$(hostname)"
echo "cpu_count=$(nproc 2>/dev/null || echo 1)"
echo "mem_total_kb=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo)"
v=${{KEEL_PYTHON_VERSION:-$(python3 -V 2>/dev/null)}}; echo "python_version=${{v#Python }}"
echo "systemd=$([ -d /run/systemd/system ] && echo yes || echo no)"
echo "arch=$(uname -m)"
sed 's/^/pending_handler=/' {PENDING_HANDLERS} 2>/dev/null
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
