"""Keep secrets out of output, audit records and notifications.

A value is secret when its name looks secret (password, token, key, …) or when it was declared
secret in the inventory (`secret_vars`). Every known secret value is also masked wherever it shows
up inside free text, such as a command's output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from remediations.core.vault import VaultSecret

MASK = "*****"
DECLARING_VAR = "secret_vars"  # the inventory var that names more secret vars

SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|"
    r"dsn|auth|cookie|session[_-]?key|webhook)",
    re.IGNORECASE,
)

# Values shorter than this are not searched for inside free text: masking every "1" or "on"
# would make output unreadable and hides nothing worth hiding.
MIN_MASKED_LENGTH = 4


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


class Redactor:
    """Masks secret-named fields and every known secret value."""

    def __init__(self, secret_values: Iterable[str] = (), secret_names: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._names = {n.lower() for n in secret_names}
        for value in secret_values:
            self.add_value(value)

    def add_value(self, value: object) -> None:
        text = str(value)
        if len(text) >= MIN_MASKED_LENGTH:
            self._values.add(text)

    def is_secret(self, name: str) -> bool:
        if name == DECLARING_VAR:
            return False  # it holds names, not secrets
        return name.lower() in self._names or is_secret_name(name)

    def learn(self, variables: Mapping[str, Any]) -> None:
        """Remember the values of every secret-looking variable (recursively)."""
        declared = variables.get(DECLARING_VAR)
        if isinstance(declared, list | tuple):
            # Its items are names, to mask the values of, not secrets: masking them would hide which
            # variable changed ("*****: *****").
            self._names.update(str(n).lower() for n in declared)
        for name, value in variables.items():
            if isinstance(value, VaultSecret) or (
                isinstance(value, list | tuple) and any(isinstance(v, VaultSecret) for v in value)
            ):  # decrypted from Ansible Vault: a secret whatever its name
                for item in value if isinstance(value, list | tuple) else [value]:
                    self.add_value(item)
            elif isinstance(value, Mapping):
                self.learn(value)
            elif self.is_secret(str(name)) and isinstance(value, list | tuple):
                # Output shows each item (one password of several), never the list's repr.
                for item in value:
                    if item not in (None, ""):
                        self.add_value(item)
            elif self.is_secret(str(name)) and value not in (None, ""):
                self.add_value(value)

    def text(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def value(self, name: str, value: Any) -> Any:
        if self.is_secret(name) and value not in (None, "", False):
            return MASK
        return self.data(value)

    def data(self, value: Any) -> Any:
        """A deep copy of `value` with secret-named keys and known secret values masked."""
        if isinstance(value, Mapping):
            return {str(k): self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self.assignment(value)
        return value

    def assignment(self, text: str) -> str:
        """Mask `NAME=VALUE` when NAME looks secret, then any known secret value."""
        name, sep, rest = text.partition("=")
        if sep and name and " " not in name and self.is_secret(name) and rest:
            self.add_value(rest)
            return f"{name}={MASK}"
        return self.text(text)


# The password of a URL's user info (postgres://shop:PASSWORD@db/shop): a DSN in an env var that is
# not named like a secret (DATABASE_URL) still shows up in a log line or a command's output.
URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE)


def url_passwords_masked(text: str) -> str:
    """`text` with the password of every URL's user info masked (`postgres://shop:*****@db`)."""
    return URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
