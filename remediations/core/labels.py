"""A label matcher as Prometheus and Alertmanager read one: `name=value`, `!=`, `=~` and `!~` (the
regular expression matches the whole value), a label that is absent being the empty value. The
metrics health probes and the alert rules both match with it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

OPS = ("=~", "!~", "!=", "=")  # longest first, for parsers


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # = != =~ !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.label, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        found = re.fullmatch(self.value, got) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'
