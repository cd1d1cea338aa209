"""Ansible Vault: decrypt ``$ANSIBLE_VAULT;1.1;AES256`` files and ``!vault`` values.

The format is ansible-core's (``ansible/parsing/vault``), read here with the
``cryptography`` package's primitives::

    $ANSIBLE_VAULT;1.1;AES256            (1.2 adds ";<vault-id label>")
    <hex of: hex(salt) "\\n" hex(hmac) "\\n" hex(ciphertext)>, in 80-column lines

PBKDF2-HMAC-SHA256 (10000 rounds) of the password and the 32-byte salt gives
80 bytes: the AES-256 key, the HMAC-SHA256 key and the 16-byte CTR counter
block. The HMAC over the ciphertext is checked first, so a wrong password is
told apart from a corrupt body; the plaintext is PKCS#7 padded.

Decrypted text is wrapped in :class:`Secret` (a ``str``), which
:func:`keel.output.secret_values` masks in output, plans, diffs and ``--json``.

Example::

    passwords = Passwords(file="~/.vault_pass")   # or $ANSIBLE_VAULT_PASSWORD_FILE, or a prompt
    text = decrypt(Path("group_vars/all/vault.yml").read_text(), passwords.get())
"""

from __future__ import annotations

import binascii
import getpass
import hmac
import os
import subprocess
import sys
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from keel.errors import KeelError

__all__ = ["HEADER", "Passwords", "Secret", "VaultError", "decrypt", "is_encrypted"]

HEADER = "$ANSIBLE_VAULT"
PASSWORD_FILE_ENV = "ANSIBLE_VAULT_PASSWORD_FILE"
ROUNDS = 10000
KEY_LEN = 32
IV_LEN = 16


class VaultError(KeelError):
    """Why a vault could not be opened, without its location (the caller adds it)."""


class Secret(str):
    """A decrypted value: a plain ``str`` that output masks wherever it appears."""

    __slots__ = ()


def is_encrypted(text: str) -> bool:
    return text.lstrip().startswith(HEADER + ";")


def decrypt(envelope: str, password: bytes | Callable[[], bytes]) -> str:
    """The plaintext of one vault envelope (header line and hex body).

    ``password`` may be a callable, called only once the envelope has parsed
    (so a malformed file never prompts). Raises :class:`VaultError` with
    ``"wrong vault password"`` when the HMAC does not match, or a short
    description of what is malformed.
    """
    lines = envelope.strip().splitlines()
    header = lines[0].strip().split(";") if lines else []
    if len(header) < 3 or header[0] != HEADER:
        raise VaultError("not an ansible-vault envelope")
    if header[1] not in ("1.1", "1.2"):
        raise VaultError(f"unsupported vault format version {header[1]!r}")
    if header[2] != "AES256":
        raise VaultError(f"unsupported vault cipher {header[2]!r}")
    try:
        outer = binascii.unhexlify("".join(line.strip() for line in lines[1:]))
        salt_hex, mac_hex, body_hex = outer.split(b"\n", 2)
        salt = binascii.unhexlify(salt_hex)
        mac = binascii.unhexlify(mac_hex)
        ciphertext = binascii.unhexlify(body_hex.strip())
    except (binascii.Error, ValueError):
        raise VaultError("corrupt vault body (not the hex of salt, HMAC and ciphertext)") from None
    if not ciphertext or len(ciphertext) % 16:
        raise VaultError("corrupt vault body (ciphertext is not whole AES blocks)")
    if callable(password):
        password = password()
    derived = PBKDF2HMAC(algorithm=hashes.SHA256(), length=2 * KEY_LEN + IV_LEN, salt=salt,
                         iterations=ROUNDS).derive(password)
    aes_key, mac_key, iv = derived[:KEY_LEN], derived[KEY_LEN:2 * KEY_LEN], derived[2 * KEY_LEN:]
    if not hmac.compare_digest(hmac.new(mac_key, ciphertext, sha256).digest(), mac):
        raise VaultError("wrong vault password (or the file was altered)")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise VaultError("corrupt vault body (bad padding or not UTF-8)") from None


class Passwords:
    """Where the vault password comes from, asked for only when something is encrypted.

    In order: ``file`` (``--vault-password-file``), ``$ANSIBLE_VAULT_PASSWORD_FILE``,
    then a prompt when stdin is a terminal. As with Ansible, an executable file
    is run and its output is the password; a plain file's content, stripped of
    surrounding whitespace, is.
    """

    def __init__(self, file: str | None = None) -> None:
        self.file = file or os.environ.get(PASSWORD_FILE_ENV) or None
        self._password: bytes | None = None

    def get(self) -> bytes:
        if self._password is None:
            self._password = self._read()
        return self._password

    def _read(self) -> bytes:
        if self.file:
            path = Path(self.file).expanduser()
            try:
                if os.access(path, os.X_OK) and path.is_file():
                    out = subprocess.run([str(path)], capture_output=True, check=True,
                                         timeout=60).stdout
                else:
                    out = path.read_bytes()
            except OSError as exc:
                raise VaultError(f"vault password file {self.file}: "
                                 f"{exc.strerror or exc}") from None
            except (subprocess.SubprocessError) as exc:
                raise VaultError(f"vault password script {self.file} failed: {exc}") from None
            password = out.strip()
            if not password:
                raise VaultError(f"vault password file {self.file} is empty")
            return password
        if sys.stdin.isatty():
            return getpass.getpass("Vault password: ").encode()
        raise VaultError("encrypted with ansible-vault, and no password: give "
                         f"--vault-password-file or set {PASSWORD_FILE_ENV}")
