"""The example app (app/hello), through Flask's test client.

The app is not an installed package: like uWSGI (chdir + "." on sys.path),
the tests import it from the app/ directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))

from hello import create_app, views
from hello import migrate as migrate_module

APP_DIR = Path(__file__).resolve().parents[2] / "app"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def environ(state_dir: Path) -> dict[str, str]:
    return {
        "APP_NAME": "hello",
        "APP_RELEASE": "20250101-abc123",
        "APP_STATE_DIR": str(state_dir),
        "APP_SECRET_KEY": "test-secret",
    }


@pytest.fixture
def client(environ):
    return create_app(environ).test_client()


def test_index_names_app_and_release(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "<h1>hello</h1>" in page
    assert "20250101-abc123" in page
    assert "/static/style.css" in page


def test_index_escapes_configured_name(environ):
    environ["APP_NAME"] = "<script>x</script>"
    page = create_app(environ).test_client().get("/").get_data(as_text=True)
    assert "<script>x</script>" not in page
    assert "&lt;script&gt;" in page


def test_version_reports_release(client):
    response = client.get("/version")
    assert response.status_code == 200
    assert response.get_json() == {"name": "hello", "release": "20250101-abc123"}


def test_release_defaults_to_dev():
    body = create_app({}).test_client().get("/version").get_json()
    assert body == {"name": "hello", "release": "dev"}


def test_healthz_ok(client, state_dir):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["release"] == "20250101-abc123"
    assert body["schema_version"] is None
    assert response.headers["Cache-Control"] == "no-store"
    # The write probe cleans up after itself.
    assert list(state_dir.iterdir()) == []


@pytest.mark.parametrize("missing", ["APP_SECRET_KEY", "APP_STATE_DIR"])
def test_healthz_names_missing_config(environ, missing):
    del environ[missing]
    response = create_app(environ).test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "fail"
    assert missing in body["reason"]


def test_healthz_treats_empty_value_as_missing(environ):
    environ["APP_SECRET_KEY"] = "  "
    response = create_app(environ).test_client().get("/healthz")
    assert response.status_code == 503
    assert "APP_SECRET_KEY" in response.get_json()["reason"]


def test_app_imports_and_answers_without_any_config():
    response = create_app({}).test_client().get("/healthz")
    assert response.status_code == 503
    reason = response.get_json()["reason"]
    assert "APP_SECRET_KEY" in reason and "APP_STATE_DIR" in reason


def test_healthz_fails_when_state_dir_is_absent(environ, tmp_path):
    environ["APP_STATE_DIR"] = str(tmp_path / "nope")
    response = create_app(environ).test_client().get("/healthz")
    assert response.status_code == 503
    assert "does not exist" in response.get_json()["reason"]


def test_healthz_fails_when_state_dir_is_not_writable(client, monkeypatch):
    # Simulated: the tests may run as root, who can write anywhere.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(views.tempfile, "NamedTemporaryFile", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "not writable" in response.get_json()["reason"]
    assert "Permission denied" in response.get_json()["reason"]


@pytest.fixture
def slept(monkeypatch):
    """Record /io's sleeps instead of sleeping."""
    calls: list[float] = []
    monkeypatch.setattr(views.time, "sleep", calls.append)
    return calls


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", 0.1), ("?seconds=0.25", 0.25), ("?seconds=-3", 0.0), ("?seconds=99", 10.0)],
)
def test_io_sleeps_clamped_seconds(client, slept, query, expected):
    response = client.get("/io" + query)
    assert response.status_code == 200
    assert response.get_json()["seconds"] == expected
    assert slept == [expected]


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", ""])
def test_io_rejects_bad_seconds(client, slept, value):
    response = client.get(f"/io?seconds={value}")
    assert response.status_code == 400
    assert response.get_json()["status"] == "error"
    assert slept == []


@pytest.mark.parametrize(("n", "expected_n", "result"), [(10, 10, 285), (0, 0, 0), (-5, 0, 0)])
def test_cpu_sums_squares(client, n, expected_n, result):
    body = client.get(f"/cpu?n={n}").get_json()
    assert body["n"] == expected_n
    assert body["result"] == result


def test_cpu_default_and_clamp(environ):
    environ["APP_CPU_MAX_N"] = "1000"
    client = create_app(environ).test_client()
    assert client.get("/cpu").get_json()["n"] == 1000  # default 100000, clamped
    assert client.get("/cpu?n=10000000000").get_json()["n"] == 1000


def test_cpu_rejects_bad_n(client):
    assert client.get("/cpu?n=1.5").status_code == 400
    assert client.get("/cpu?n=lots").status_code == 400


def test_dev_server_serves_static_like_nginx(client):
    response = client.get("/static/style.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    response.close()


def test_wsgi_module_exposes_plain_callable(monkeypatch, environ):
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("wsgi", None)
    wsgi = importlib.import_module("wsgi")
    try:
        assert (
            wsgi.app.test_client().get("/version").get_json()["release"] == environ["APP_RELEASE"]
        )
    finally:
        sys.modules.pop("wsgi", None)


def test_create_app_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("APP_RELEASE", "from-os-environ")
    assert create_app().test_client().get("/version").get_json()["release"] == "from-os-environ"


# migrate: the command run in the new code before it takes traffic


def test_migrate_creates_schema_then_changes_nothing(state_dir):
    first = migrate_module.migrate(state_dir, "r1")
    assert (first.before, first.after, first.release_recorded) == (0, 1, True)
    assert first.changed and first.summary().startswith("changed:")

    again = migrate_module.migrate(state_dir, "r1")
    assert (again.before, again.after, again.release_recorded) == (1, 1, False)
    assert not again.changed and again.summary().startswith("unchanged:")

    next_release = migrate_module.migrate(state_dir, "r2")
    assert next_release.changed and next_release.release_recorded
    assert migrate_module.schema_version(state_dir) == migrate_module.LATEST


def test_healthz_reports_schema_after_migrate(client, state_dir):
    migrate_module.migrate(state_dir, "r1")
    body = client.get("/healthz").get_json()
    assert body["schema_version"] == migrate_module.LATEST


def test_schema_version_never_creates_the_database(state_dir):
    assert migrate_module.schema_version(state_dir) is None
    assert migrate_module.schema_version(None) is None
    assert list(state_dir.iterdir()) == []


def test_migrate_refuses_missing_state_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        migrate_module.migrate(tmp_path / "absent", "r1")
    assert not (tmp_path / "absent").exists()


def test_migrate_script_main(state_dir, capsys, monkeypatch):
    monkeypatch.setenv("APP_STATE_DIR", str(state_dir))
    monkeypatch.setenv("APP_RELEASE", "r9")
    assert migrate_module.main([]) == 0
    assert capsys.readouterr().out.startswith("changed:")
    assert migrate_module.main(["--release", "r9"]) == 0
    assert capsys.readouterr().out.startswith("unchanged:")


def test_migrate_script_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("APP_STATE_DIR", raising=False)
    assert migrate_module.main([]) == 2
    assert "APP_STATE_DIR" in capsys.readouterr().err
    assert migrate_module.main(["--state-dir", str(tmp_path / "absent")]) == 1


def test_migrate_script_runs_standalone(state_dir):
    """``python migrate.py`` from any working directory, as the deploy runs it."""
    import subprocess

    env = {**os.environ, "APP_STATE_DIR": str(state_dir), "APP_RELEASE": "r1"}
    done = subprocess.run(
        [sys.executable, str(APP_DIR / "migrate.py")],
        cwd=state_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("changed:")


def test_flask_migrate_command(environ, state_dir):
    app = create_app(environ)
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("changed:")
    result = app.test_cli_runner().invoke(args=["migrate"])
    assert result.output.startswith("unchanged:")


def test_flask_migrate_command_without_state_dir():
    result = create_app({}).test_cli_runner().invoke(args=["migrate"])
    assert result.exit_code != 0
    assert "APP_STATE_DIR" in result.output


def test_runtime_names_settings_but_never_values(client, monkeypatch):
    monkeypatch.setenv("APP_SOME_TOKEN", "very-secret-value")
    monkeypatch.setenv("APP_GREETING", "bonjour")
    body = client.get("/runtime").get_json()
    assert body["greeting"] == "bonjour"
    assert "APP_SOME_TOKEN" in body["settings"]
    assert "very-secret-value" not in str(body)
    assert body["uwsgi"] is None  # not under uWSGI here
    assert body["python"].count(".") == 2
