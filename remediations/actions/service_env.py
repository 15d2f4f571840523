"""What a service's containers run with, learnt as secrets before their output is shown: the values
of its env (what its env files and `environment:` gave it) whose names look secret or are listed in
`secret_vars`, and the password of any URL in it. Logs and one-off commands print what the app
prints, and an app prints its own settings more often than it should."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from remediations.core import validate
from remediations.core.context import HostContext
from remediations.reporting.redact import URL_PASSWORD, url_passwords_masked


def learn_env_secrets(ctx: HostContext, envs: Iterable[Mapping[str, str]]) -> None:
    """Mask, wherever they show up in this run, the secret values of these container envs."""
    declared = {str(n) for n in validate.value(ctx.host, "secret_vars") or ()}
    for env in envs:
        for name, value in env.items():
            if ctx.redactor.is_secret(name) or name in declared:
                ctx.redactor.add_value(value)
            for match in URL_PASSWORD.finditer(value):
                ctx.redactor.add_value(match.group(0)[len(match.group(1)) : -1])


def shown_output(ctx: HostContext, lines: Iterable[str]) -> list[str]:
    """Lines of a service's output as they may be shown: every known secret and URL password masked."""
    return [ctx.redactor.text(url_passwords_masked(line)) for line in lines]
