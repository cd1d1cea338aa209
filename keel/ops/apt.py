"""Debian packages with apt, with a cache-valid time so ``apt-get update`` is rare."""

from __future__ import annotations

from collections.abc import Sequence

from keel.facts import STATE_DIR
from keel.operation import Change, NoChange, OpGenerator, Probe, operation, q

# Our own stamp: apt does not touch its lists when nothing changed upstream.
UPDATE_STAMP = f"{STATE_DIR}/apt-update.stamp"
APT_GET = (
    "apt-get -q -y -o DPkg::Lock::Timeout=300 "
    "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)
UPDATE = f"apt-get -q -o DPkg::Lock::Timeout=300 update && mkdir -p {STATE_DIR} && touch {UPDATE_STAMP}"
_AGE = f'echo "age=$(( $(date +%s) - $(stat -c %Y {UPDATE_STAMP} 2>/dev/null || echo 0) ))"'


def _age(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("age="):
            return int(line[4:])
    return 1 << 30


@operation
def update(cache_valid_time: int = 3600) -> OpGenerator:
    """``apt-get update`` unless it succeeded less than ``cache_valid_time`` seconds ago."""
    res = yield Probe(_AGE)
    age = _age(res.out)
    if age < cache_valid_time:
        return NoChange(f"cache is {age}s old")
    return Change([UPDATE], "package lists refreshed")


def _split(name: str) -> tuple[str, str, str | None]:
    """``"libc6:amd64=2.36-9"`` -> (bare ``libc6``, query ``libc6:amd64``, pin ``2.36-9``)."""
    query, _, pin = name.partition("=")
    return query.split(":")[0], query, pin or None


@operation
def packages(
    names: Sequence[str],
    present: bool = True,
    cache_valid_time: int = 3600,
    install_recommends: bool = False,
) -> OpGenerator:
    """Packages ``names`` are installed (or, with ``present=False``, removed).

    A name may carry an architecture (``libc6:amd64``) or a version pin
    (``nginx=1.22.1-9``); a pinned package installed at another version counts
    as missing. Held packages count as installed. Removal ignores the pin.

    Example: ``packages(host, ["nginx", "python3-venv"])``
    """
    wanted = [(n, *_split(n)) for n in names]
    pinned = any(pin for *_, pin in wanted)
    fmt = "${Package} ${db:Status-Abbrev} ${Version}" if pinned else "${Package} ${db:Status-Abbrev}"
    res = yield Probe(
        f"dpkg-query -W -f='{fmt}\\n' "
        + " ".join(q(query) for _, _, query, _ in wanted) + " 2>/dev/null; " + _AGE
    )
    # Status-Abbrev is desired, status and error flags: "ii ", "hi " (held); "i" second = installed.
    installed: dict[str, str] = {}
    for parts in (ln.split() for ln in res.out.splitlines()):
        if len(parts) >= 2 and parts[1][1:2] == "i":
            installed[parts[0].split(":")[0]] = parts[2] if len(parts) > 2 else ""
    if present:
        missing = [n for n, bare, _, pin in wanted
                   if bare not in installed or (pin is not None and installed[bare] != pin)]
        if not missing:
            return NoChange("all installed")
        cmds = [] if _age(res.out) < cache_valid_time else [UPDATE]
        rec = "" if install_recommends else " --no-install-recommends"
        cmds.append(f"{APT_GET}{rec} install " + " ".join(q(n) for n in missing))
        return Change(cmds, "installed " + ", ".join(missing))
    extra = [query for _, bare, query, _ in wanted if bare in installed]
    if not extra:
        return NoChange("none installed")
    return Change([f"{APT_GET} remove " + " ".join(q(n) for n in extra)],
                  "removed " + ", ".join(extra))
