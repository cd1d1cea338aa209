"""Ansible Vault in inventories, against files made by the real ``ansible-vault`` CLI.

ansible-core is a test-only dependency (requirements.lock): each test encrypts
with its CLI, then keel decrypts with keel/vault.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keel.inventory import Inventory, InventoryError
from keel.output import MASK, mask, secret_values
from keel.vault import PASSWORD_FILE_ENV, Passwords, Secret, VaultError, decrypt
from tests.conftest import ROOT

ANSIBLE_VAULT = str(Path(sys.executable).with_name("ansible-vault"))
PASSWORD = "correct horse battery staple"


def ansible_vault(*args: str, cwd: Path) -> str:
    proc = subprocess.run([ANSIBLE_VAULT, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """An inventory dir with a password file; hosts web1 (group web) and db1."""
    (tmp_path / "pass").write_text(PASSWORD + "\n")
    (tmp_path / "other-pass").write_text("not the password\n")
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "hosts.yml").write_text(textwrap.dedent("""\
        all:
          children:
            web: {hosts: {web1: {ansible_host: 10.0.0.11}}}
            db: {hosts: {db1: {ansible_host: 10.0.0.12}}}
        """))
    return tmp_path


def encrypted_vars(site: Path, relpath: str, text: str, *extra: str) -> Path:
    """Write ``text`` under inv/``relpath`` and encrypt it in place with ansible-vault."""
    path = site / "inv" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    ansible_vault("encrypt", "--vault-password-file", str(site / "pass"), *extra, str(path),
                  cwd=site)
    assert path.read_text().startswith("$ANSIBLE_VAULT;1.")
    return path


def load(site: Path, password_file: str = "pass") -> Inventory:
    return Inventory.load(site / "inv" / "hosts.yml", Passwords(str(site / password_file)))


def test_whole_file_group_vars_are_decrypted_and_secret(site: Path) -> None:
    encrypted_vars(site, "group_vars/web/vault.yml",
                   "db_password: hunter2-from-vault\nmotd: [one line, two lines]\nworkers: 4\n")
    (site / "inv" / "group_vars" / "web" / "main.yml").write_text("plain: visible\n")
    (web1,) = load(site).hosts("web1")
    assert web1.vars["db_password"] == "hunter2-from-vault"
    assert web1.vars["motd"] == ["one line", "two lines"]
    assert web1.vars["workers"] == 4  # types survive: YAML is parsed after decryption
    assert isinstance(web1.vars["db_password"], Secret)
    assert all(isinstance(v, Secret) for v in web1.vars["motd"])
    assert not isinstance(web1.vars["plain"], Secret)
    # Every decrypted string is masked, whatever its variable is called.
    assert secret_values(web1.vars) == {"hunter2-from-vault", "one line", "two lines"}
    (db1,) = load(site).hosts("db1")
    assert "db_password" not in db1.vars


def test_vault_tagged_values_and_vault_ids(site: Path) -> None:
    plain = ansible_vault("encrypt_string", "--vault-password-file", str(site / "pass"),
                          "api-token-0f9e", "--name", "deploy_key", cwd=site)
    labelled = ansible_vault("encrypt_string", "--vault-id", f"prod@{site / 'pass'}",
                             "s3cr3t with spaces", "--name", "banner", cwd=site)
    assert "$ANSIBLE_VAULT;1.2;AES256;prod" in labelled
    host_vars = site / "inv" / "host_vars" / "db1.yml"
    host_vars.parent.mkdir(parents=True)
    host_vars.write_text("port_offset: 3\n" + plain + labelled)
    (db1,) = load(site).hosts("db1")
    assert db1.vars["deploy_key"] == "api-token-0f9e"
    assert db1.vars["banner"] == "s3cr3t with spaces"
    assert isinstance(db1.vars["banner"], Secret)
    assert db1.vars["port_offset"] == 3
    assert mask("key=api-token-0f9e", secret_values(db1.vars)) == f"key={MASK}"


def test_password_from_environment_and_from_a_script(site: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    encrypted_vars(site, "group_vars/all.yml", "token: from-the-env\n")
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(site / "pass"))
    (web1,) = Inventory.load(site / "inv" / "hosts.yml").hosts("web1")
    assert web1.vars["token"] == "from-the-env"
    # An executable password file is run, as with Ansible (e.g. a password manager).
    script = site / "pass.sh"
    script.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    script.chmod(0o700)
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(site / "other-pass"))
    (web1,) = load(site, "pass.sh").hosts("web1")  # the option wins over the environment
    assert web1.vars["token"] == "from-the-env"


def test_the_password_is_read_only_when_something_is_encrypted(site: Path) -> None:
    (site / "inv" / "group_vars").mkdir()
    (site / "inv" / "group_vars" / "all.yml").write_text("x: 1\n")
    assert load(site, "no-such-file").hosts("web1")[0].vars["x"] == 1


def test_wrong_password_names_the_file(site: Path) -> None:
    path = encrypted_vars(site, "group_vars/web.yml", "db_password: hunter2\n")
    with pytest.raises(InventoryError) as caught:
        load(site, "other-pass")
    assert str(caught.value) == f"{path}: wrong vault password (or the file was altered)"


def test_wrong_password_for_a_tagged_value_names_file_and_line(site: Path) -> None:
    value = ansible_vault("encrypt_string", "--vault-password-file", str(site / "pass"),
                          "x" * 10, "--name", "token", cwd=site)
    path = site / "inv" / "host_vars" / "web1.yml"
    path.parent.mkdir(parents=True)
    path.write_text("a: 1\n" + value)
    with pytest.raises(InventoryError) as caught:
        load(site, "other-pass")
    assert str(caught.value) == (
        f"{path}:2: !vault value: wrong vault password (or the file was altered)")


@pytest.mark.parametrize(("change", "why"), [
    (lambda lines: [*lines[:2], lines[2][:-2] + "zz", *lines[3:]], "corrupt vault body"),
    (lambda lines: lines[:1], "corrupt vault body"),
    # The last hex digit of the ciphertext, changed to another hex digit: the HMAC catches it.
    (lambda lines: [*lines[:-1], lines[-1][:-2] + ("30" if lines[-1][-2:] != "30" else "31")],
     "wrong vault password (or the file was altered)"),
    (lambda lines: ["$ANSIBLE_VAULT;1.1;AES128", *lines[1:]], "unsupported vault cipher 'AES128'"),
])
def test_corrupt_files_are_one_line_errors(site: Path, change, why: str) -> None:
    path = encrypted_vars(site, "group_vars/web.yml", "db_password: hunter2\n")
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    with pytest.raises(InventoryError) as caught:
        load(site)
    message = str(caught.value)
    assert message.startswith(f"{path}: {why}"), message
    assert "\n" not in message


def test_no_password_source_is_an_error(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = encrypted_vars(site, "group_vars/web.yml", "db_password: hunter2\n")
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(InventoryError) as caught:
        Inventory.load(site / "inv" / "hosts.yml")
    assert str(caught.value) == (f"{path}: encrypted with ansible-vault, and no password: give "
                                 "--vault-password-file or set ANSIBLE_VAULT_PASSWORD_FILE")


def test_encrypted_inventory_file_is_refused(site: Path) -> None:
    ansible_vault("encrypt", "--vault-password-file", str(site / "pass"),
                  str(site / "inv" / "hosts.yml"), cwd=site)
    with pytest.raises(InventoryError, match=r"hosts.yml:1: ansible-vault encrypted inventory "
                                             r"files are not supported"):
        load(site)


def test_decrypt_round_trip_of_multiline_unicode(site: Path) -> None:
    text = "clé: \"valeur ünïcode\"\nlong: " + "x" * 300 + "\n"
    path = encrypted_vars(site, "group_vars/web.yml", text)
    assert decrypt(path.read_text(), PASSWORD.encode()) == text
    with pytest.raises(VaultError, match="wrong vault password"):
        decrypt(path.read_text(), b"nope")


def test_fab_plan_with_a_wrong_password_fails_before_any_host(site: Path) -> None:
    """One line on stderr, exit non-zero; the host (a closed loopback port) is never dialled."""
    inv = site / "inv"
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    app:\n      hosts:\n"
        "        web1: {ansible_host: 127.0.0.1, ansible_port: 9}\n")
    path = encrypted_vars(site, "group_vars/app.yml", "db_password: hunter2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fabric", "plan", "--inventory", str(inv / "hosts.yml"),
         "--vault-password-file", str(site / "other-pass"), "--json", str(site / "out.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"{path}: wrong vault password (or the file was altered)"
    assert not (site / "out.json").exists()
