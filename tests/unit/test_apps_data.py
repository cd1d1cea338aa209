"""Decisions of roles/apps.py about shared paths and health, and the release upload's exclusion."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from keel.errors import HostError
from keel.ops import files
from roles import apps

HOST: Any = SimpleNamespace(name="lab1")


@pytest.mark.parametrize("entries, expected", [
    (["instance", "media/"], ["instance", "media"]),
    (["./var/uploads"], ["var/uploads"]),
    ([], []),
])
def test_shared_paths_are_clean_relative_paths(entries: list[str], expected: list[str]) -> None:
    assert apps._shared_paths(HOST, {"name": "flaskr", "shared_paths": entries}) == expected


@pytest.mark.parametrize("entry", ["../etc", "/etc", "a/../../b", ".", "", "env", "state",
                                   ".keel-setup-done"])
def test_shared_path_outside_the_release_is_refused(entry: str) -> None:
    with pytest.raises(HostError) as err:
        apps._shared_paths(HOST, {"name": "flaskr", "shared_paths": [entry]})
    assert str(err.value) == (f"lab1: app flaskr: shared_paths: {entry!r} is not a path "
                              "inside the release")


def _shell(app: dict[str, Any], code: str, probe_404: bool = False) -> tuple[bool, str]:
    probe = "probe() { echo 404; }" if probe_404 else "probe() { echo 200; }"
    script = (f"{probe}\n{apps.health_check(app)}healthy {code} && echo yes || echo no; "
              "health_path")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "yes", out[1]


def test_health_statuses_and_default_path() -> None:
    app = {"healthy_statuses": "2xx 3xx", "health_path": ""}
    assert _shell(app, "302") == (True, "/healthz")
    assert _shell(app, "404", probe_404=True) == (False, "/")
    assert _shell({"healthy_statuses": "200", "health_path": "/up"}, "204") == (False, "/up")


@pytest.mark.parametrize("statuses", ["ok", "", "2x", "600"])
def test_bad_healthy_statuses(statuses: str) -> None:
    with pytest.raises(HostError):
        apps._check_health(HOST, {"name": "a", "health_path": "", "healthy_statuses": statuses})


def test_exclude_is_a_path_not_a_name(tmp_path: Path) -> None:
    for rel in ("instance/db.sqlite", "pkg/instance/keep.py", "pkg/mod.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    kept = [p.relative_to(tmp_path).as_posix() for p in files._walk(tmp_path, ("instance",))]
    assert kept == ["pkg/mod.py", "pkg/instance/keep.py"]


def _app(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "user": name, "server_name": "_", "listen": 80, "tls": False,
            "tls_listen": 443, **kw}


@pytest.mark.parametrize("second, message", [
    (_app("blog", server_name="www.example.org example.org"),
     "apps shop and blog both use server_name example.org on port 80"),
    (_app("blog", server_name="blog.example.org", user="shop"),
     "apps shop and blog both use user shop"),
])
def test_conflicting_apps_are_refused(second: dict[str, Any], message: str) -> None:
    with pytest.raises(HostError) as err:
        apps._check_conflicts(HOST, [_app("shop", server_name="example.org"), second])
    assert str(err.value) == f"lab1: {message}"


def test_same_name_on_other_ports_is_fine() -> None:
    apps._check_conflicts(HOST, [_app("a", server_name="x.org"),
                                 _app("b", server_name="x.org", listen=8080)])


def test_verify_names_exactly_the_failed_hosts(tmp_path: Path) -> None:
    from keel.verify import failed_hosts

    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_http_through_nginx[ssh://lab1]"/>'
        '<testcase name="test_http_through_nginx[ssh://lab2]"><failure message="x"/></testcase>'
        '<testcase name="test_units[ssh://lab3]"><error message="y"/></testcase>'
        '<testcase name="test_units[ssh://lab1]"/>'
        '</testsuite></testsuites>')
    assert failed_hosts(report, ["lab1", "lab2", "lab3"]) == ["lab2", "lab3"]


def _reqs(tmp_path: Path, files_: dict[str, str], requirements: str = "requirements.txt") -> str:
    for name, text in files_.items():
        (tmp_path / name).write_text(text)
    return apps._requirements(HOST, {"name": "p", "requirements": requirements}, tmp_path)


def test_requirements_file_wins(tmp_path: Path) -> None:
    assert _reqs(tmp_path, {"requirements.txt": "flask==3.1.3\n",
                            "pyproject.toml": "[project]\ndependencies = ['django']\n"}) == (
        "flask==3.1.3\n")


def test_pylock_is_honoured_before_pyproject(tmp_path: Path) -> None:
    lock = ('lock-version = "1.0"\n[[packages]]\nname = "flask"\nversion = "3.1.3"\n'
            '[[packages]]\nname = "colorama"\nversion = "0.4.6"\nmarker = "sys_platform == \'win32\'"\n')
    assert _reqs(tmp_path, {"pylock.toml": lock,
                            "pyproject.toml": "[project]\ndependencies = ['flask']\n"}) == (
        "flask==3.1.3\ncolorama==0.4.6; sys_platform == 'win32'\n")


def test_pyproject_dependencies(tmp_path: Path) -> None:
    assert _reqs(tmp_path, {"pyproject.toml": "[project]\nname = 'x'\n"
                                              "dependencies = ['flask>=3', 'click']\n"}) == (
        "flask>=3\nclick\n")


@pytest.mark.parametrize("files_, message", [
    ({"pyproject.toml": "[project]\nname = 'x'\n"}, "pyproject.toml has no [project] dependencies"),
    ({}, "nor pylock.toml or pyproject.toml"),
    ({"pyproject.toml": "[project\n"}, "cannot read its dependencies"),
])
def test_bad_dependencies(tmp_path: Path, files_: dict[str, str], message: str) -> None:
    with pytest.raises(HostError) as err:
        _reqs(tmp_path, files_)
    assert message in str(err.value) and str(err.value).startswith("lab1: app p: ")


@pytest.mark.parametrize("layout, module, expected", [
    (["flaskr/__init__.py"], "flaskr:create_app()", [""]),
    (["wsgi.py"], "wsgi:app", [""]),
    (["src/shop/__init__.py", "pyproject.toml"], "shop.wsgi:application", ["", "src"]),
    (["src/serve.py"], "serve:app", ["", "src"]),
    # A package at the top wins over a src/ of the same name (as Python's own path would).
    (["shop/__init__.py", "src/shop/__init__.py"], "shop:app", [""]),
])
def test_src_layout_is_on_the_import_path(tmp_path: Path, layout: list[str], module: str,
                                          expected: list[str]) -> None:
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert apps._python_path(tmp_path, module) == expected
