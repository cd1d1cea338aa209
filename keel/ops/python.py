"""Python virtual environments with pinned requirements."""

from __future__ import annotations

import hashlib

from keel.operation import Change, NoChange, OpGenerator, Probe, operation, q

MARKER = ".keel-venv"
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

    It is rebuilt only when the requirements or the interpreter change; the
    marker ``path/.keel-venv`` records both and is written last, so a failed
    install is retried on the next run.

    Example: ``venv(host, "/srv/hello/venvs/3f2a", "flask==3.1.3\\nuwsgi==2.0.31\\n")``
    """
    p = q(path)
    res = yield Probe(f"cat {p}/{MARKER} 2>/dev/null; echo; " + _INTERPRETER.format(python=python))
    lines = res.out.splitlines()
    interpreter = lines[-1].strip() if lines else ""
    want = f"{requirements_key(requirements)} {interpreter}"
    if lines and lines[0].strip() == want:
        return NoChange("requirements and interpreter unchanged")
    reason = "created" if not (lines and lines[0].strip()) else "requirements or interpreter changed"
    pip = f"{p}/bin/pip install -q --disable-pip-version-check --no-input"
    return Change([
        f"rm -rf {p}",
        f"{q(python)} -m venv {p}",
        f"cat > {p}/requirements.txt",
        f"{pip} -r {p}/requirements.txt",
        f"chown -R {q(owner)}:{q(group)} {p}",
        f"echo {q(want)} > {p}/{MARKER}",
    ], reason, stdin=requirements.encode())
