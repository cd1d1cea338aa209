"""keel.ops.python.venv, state in and commands out.

The probe prints the marker file (``<sha256 of requirements> <interpreter> <owner>:<group>``),
an empty line, then the interpreter identity (``<real path> <size>:<mtime>``).
"""

from __future__ import annotations

import hashlib

import pytest

from keel.operation import Change, NoChange, simulate
from keel.ops import python

VENV = "/srv/hello/venvs/3f2a"
REQS = "flask==3.1.3\nuwsgi==2.0.31\n"
KEY = hashlib.sha256(REQS.encode()).hexdigest()
INTERP = "/usr/bin/python3.11 6831736:1717171717"


def probe(marker: str, interpreter: str = INTERP) -> tuple[int, str]:
    """The marker file as written by ``echo`` (if any), the probe's ``echo``, the interpreter."""
    content = f"{marker}\n" if marker else ""
    return (0, f"{content}\n{interpreter}\n")


def rebuild(python_cmd: str = "python3", owner: str = "root:root", interp: str = INTERP) -> list[str]:
    return [
        f"rm -rf {VENV}",
        f"{python_cmd} -m venv {VENV}",
        f"cat > {VENV}/requirements.txt",
        f"{VENV}/bin/pip install -q --disable-pip-version-check --no-input --use-pep517 "
        f"-r {VENV}/requirements.txt",
        f"chown -R {owner} {VENV}",
        f"echo '{KEY} {interp} {owner}' > {VENV}/.keel-venv",
    ]


def test_requirements_key() -> None:
    assert python.requirements_key("") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert python.requirements_key(REQS) == KEY


def test_probe_script() -> None:
    assert next(python.venv(VENV, REQS)).script == (
        f"cat {VENV}/.keel-venv 2>/dev/null; echo; "
        'i=$(readlink -f "$(command -v python3)" 2>/dev/null); '
        'echo "$i $(stat -c %s:%Y "$i" 2>/dev/null)"'
    )


def test_marker_matches() -> None:
    out = simulate(python.venv(VENV, REQS), [probe(f"{KEY} {INTERP} root:root")])
    assert out == NoChange("requirements, interpreter and owner unchanged")


def test_absent_is_created() -> None:
    out = simulate(python.venv(VENV, REQS), [probe("")])
    assert out == Change(rebuild(), "created", stdin=REQS.encode())


@pytest.mark.parametrize(
    ("marker", "interpreter"),
    [
        pytest.param(f"{'0' * 64} {INTERP} root:root", INTERP, id="requirements-changed"),
        pytest.param(f"{KEY} /usr/bin/python3.11 6831736:1600000000 root:root", INTERP,
                     id="interpreter-rebuilt"),
        pytest.param(f"{KEY} {INTERP} root:root", "/usr/bin/python3.12 6900000:1717171717",
                     id="interpreter-upgraded"),
        pytest.param(f"{'0' * 64} {INTERP} hello:hello", INTERP, id="requirements-and-owner-changed"),
        pytest.param(f"{'0' * 64} {INTERP}", INTERP, id="requirements-changed-marker-without-owner"),
    ],
)
def test_marker_differs_rebuilds(marker: str, interpreter: str) -> None:
    out = simulate(python.venv(VENV, REQS), [probe(marker, interpreter)])
    assert out == Change(rebuild(interp=interpreter), "requirements or interpreter changed",
                         stdin=REQS.encode())


def test_custom_interpreter_and_owner() -> None:
    gen = python.venv(VENV, REQS, python="python3.12", owner="hello", group="www-data")
    assert next(gen).script == (
        f"cat {VENV}/.keel-venv 2>/dev/null; echo; "
        'i=$(readlink -f "$(command -v python3.12)" 2>/dev/null); '
        'echo "$i $(stat -c %s:%Y "$i" 2>/dev/null)"'
    )
    out = simulate(python.venv(VENV, REQS, python="python3.12", owner="hello", group="www-data"),
                   [probe("")])
    assert out == Change(rebuild("python3.12", "hello:www-data"), "created", stdin=REQS.encode())


# ------------------------------------------------------------ regressions


@pytest.mark.parametrize(
    ("marker", "was"),
    [
        pytest.param(f"{KEY} {INTERP} root:root", "root:root", id="owner-changed"),
        pytest.param(f"{KEY} {INTERP} hello:root", "hello:root", id="group-changed"),
        pytest.param(f"{KEY} {INTERP}", "unknown", id="marker-without-owner"),
    ],
)
def test_owner_change_is_applied(marker: str, was: str) -> None:
    out = simulate(python.venv(VENV, REQS, owner="hello", group="hello"), [probe(marker)])
    assert out == Change([f"chown -R hello:hello {VENV}",
                          f"echo '{KEY} {INTERP} hello:hello' > {VENV}/.keel-venv"],
                         f"owner {was} -> hello:hello")


def test_interpreter_path_is_quoted() -> None:
    py = "/opt/my python/bin/python3"
    interp = "/opt/my python/bin/python3.12 6900000:1717171717"
    assert next(python.venv(VENV, REQS, python=py)).script == (
        f"cat {VENV}/.keel-venv 2>/dev/null; echo; "
        "i=$(readlink -f \"$(command -v '/opt/my python/bin/python3')\" 2>/dev/null); "
        'echo "$i $(stat -c %s:%Y "$i" 2>/dev/null)"'
    )
    out = simulate(python.venv(VENV, REQS, python=py), [probe(f"{KEY} {interp} root:root", interp)])
    assert out == NoChange("requirements, interpreter and owner unchanged")
    out = simulate(python.venv(VENV, REQS, python=py), [probe("", interp)])
    assert out == Change(rebuild("'/opt/my python/bin/python3'", interp=interp), "created",
                         stdin=REQS.encode())
