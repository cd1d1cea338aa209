"""Python virtual environments with pinned requirements."""

from __future__ import annotations

import hashlib

from keel.operation import Change, NoChange, OpGenerator, Probe, operation, q

MARKER = ".keel-venv"
# Flags of every ``pip install`` into a venv. --use-pep517 builds an sdist (uWSGI)
# into a wheel, which pip keeps in its cache: without it, pip 23.0 (bookworm) runs
# the legacy ``setup.py install``, which caches nothing, so each new venv (a
# requirements change) compiles uWSGI again.
PIP_INSTALL_FLAGS = "-q --disable-pip-version-check --no-input --use-pep517"
# The interpreter's identity without starting it: real path, size and mtime.
_INTERPRETER = (
    'i=$(readlink -f "$(command -v {python})" 2>/dev/null); '
    'echo "$i $(stat -c %s:%Y "$i" 2>/dev/null)"'
)


def requirements_key(requirements: str) -> str:
    return hashlib.sha256(requirements.encode()).hexdigest()


@operation
def venv(
    path: str,
    requirements: str,
    python: str = "python3",
    owner: str = "root",
    group: str = "root",
) -> OpGenerator:
    """A venv at ``path`` with exactly ``requirements`` (the text of a requirements file).

    It is rebuilt only when the requirements or the interpreter change, and
    chowned when only the owner changes; the marker ``path/.keel-venv`` records
    all three (``<sha256> <interpreter> <owner>:<group>``) and is written last,
    so a failed install is retried on the next run.

    Example: ``venv(host, "/srv/hello/venvs/3f2a", "flask==3.1.3\\nuwsgi==2.0.31\\n")``
    """
    p = q(path)
    res = yield Probe(f"cat {p}/{MARKER} 2>/dev/null; echo; "
                      + _INTERPRETER.format(python=q(python)))
    lines = res.out.splitlines()
    interpreter = lines[-1].strip() if lines else ""
    current = lines[0].strip() if lines else ""
    built = f"{requirements_key(requirements)} {interpreter}"
    want = f"{built} {owner}:{group}"
    if current == want:
        return NoChange("requirements, interpreter and owner unchanged")
    if current == built or current.rpartition(" ")[0] == built:  # no owner: older keel
        cur_owner = current[len(built):].strip() or "unknown"
        return Change([f"chown -R {q(owner)}:{q(group)} {p}", f"echo {q(want)} > {p}/{MARKER}"],
                      f"owner {cur_owner} -> {owner}:{group}")
    reason = "created" if not current else "requirements or interpreter changed"
    pip = f"{p}/bin/pip install {PIP_INSTALL_FLAGS}"
    return Change([
        f"rm -rf {p}",
        f"{q(python)} -m venv {p}",
        f"cat > {p}/requirements.txt",
        f"{pip} -r {p}/requirements.txt",
        f"chown -R {q(owner)}:{q(group)} {p}",
        f"echo {q(want)} > {p}/{MARKER}",
    ], reason, stdin=requirements.encode())
