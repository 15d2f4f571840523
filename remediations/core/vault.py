"""Ansible Vault (format 1.1 and 1.2, AES256): inline `!vault` values and vars files encrypted whole,
opened with the password file Ansible reads from `ANSIBLE_VAULT_PASSWORD_FILE`.

The format, as `ansible-vault` writes it: a `$ANSIBLE_VAULT;1.1;AES256` header line, then hex text
whose bytes are three hex lines (salt, HMAC, ciphertext). PBKDF2-HMAC-SHA256 (10000 rounds) turns
the password and salt into an AES-256 key, an HMAC-SHA256 key and a CTR counter block; the HMAC of
the ciphertext is checked before anything is decrypted; the plaintext is PKCS#7-padded.

Every decrypted value is a `VaultSecret`: the redactor masks it wherever it shows up, whatever its
var is called. A password script (an executable password file) is not run.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
from typing import Any

from remediations.core.errors import UsageError

PASSWORD_ENV = "ANSIBLE_VAULT_PASSWORD_FILE"  # noqa: S105 - the name of a variable, not a password
HEADER = "$ANSIBLE_VAULT;"
_ROUNDS = 10_000


class VaultSecret(str):
    """Text decrypted from Ansible Vault; `ciphertext` is the inline value it came from, if any."""

    ciphertext: str | None = None


def password_file() -> str | None:
    value = os.environ.get(PASSWORD_ENV, "").strip()
    return os.path.expanduser(value) if value else None


def read_password(where: str) -> bytes:
    """The vault password from $ANSIBLE_VAULT_PASSWORD_FILE (trailing whitespace dropped, as Ansible)."""
    path = password_file()
    if path is None:
        raise UsageError(f"{where}: no vault password; set {PASSWORD_ENV} to a file holding it")
    if os.path.isfile(path) and os.access(path, os.X_OK):
        raise UsageError(f"{where}: {PASSWORD_ENV}={path} is a script, which this project does not run; "
                         "point it at a file holding the password (readable only by you)")  # fmt: skip
    try:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read {PASSWORD_ENV}={path}: {exc.strerror}") from None
    if not secret:
        raise UsageError(f"{where}: {PASSWORD_ENV}={path} is empty")
    return secret


def _parts(text: str, where: str) -> tuple[bytes, bytes, bytes]:
    lines = text.strip().splitlines()
    fields = [f.strip() for f in lines[0].split(";")] if lines else []
    known = len(fields) >= 3 and fields[0] == HEADER[:-1] and fields[1] in ("1.1", "1.2")
    if not known or fields[2] != "AES256":
        raise UsageError(f"{where}: not an Ansible Vault 1.1/1.2 AES256 value (header {lines[:1]!r})")
    try:
        body = binascii.unhexlify("".join(line.strip() for line in lines[1:]))
        salt, mac, data = (binascii.unhexlify(part) for part in body.split(b"\n", 2))
    except (ValueError, binascii.Error):
        raise UsageError(
            f"{where}: the Ansible Vault text is damaged (not the hex ansible-vault writes)"
        ) from None
    return salt, mac, data


_opened: dict[tuple[str, bytes], str] = {}  # the same value in group_vars/all is every host's


def decrypt(text: str, password: bytes, where: str) -> str:
    """The plaintext of one vault text; a wrong password is one line, nothing half-decrypted."""
    key = (text.strip(), hashlib.sha256(password).digest())
    if key in _opened:
        return _opened[key]
    salt, mac, data = _parts(text, where)
    derived = hashlib.pbkdf2_hmac("sha256", password, salt, _ROUNDS, 80)
    aes_key, mac_key, counter = derived[:32], derived[32:64], derived[64:]
    if not hmac.compare_digest(hmac.new(mac_key, data, hashlib.sha256).digest(), mac):
        raise UsageError(f"{where}: the vault password in {PASSWORD_ENV} does not open it")
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(counter)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{where}: the vault value does not decrypt to UTF-8 text") from None
    _opened[key] = plain
    return plain


def secrets_in(value: Any) -> Any:
    """Every string inside a decrypted vars file marked as a VaultSecret (numbers stay numbers)."""
    if isinstance(value, str):
        return VaultSecret(value)
    if isinstance(value, dict):
        return {k: secrets_in(v) for k, v in value.items()}
    if isinstance(value, list):
        return [secrets_in(v) for v in value]
    return value
