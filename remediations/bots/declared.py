"""The bots an inventory declares (`telegram_bots`), where each one's token is, and the record of the
webhooks this tool set (the Bot API never says which secret_token a webhook has).

    telegram_bots:
      calendar:                            # --bot calendar
        host: api-1                        # its token is in an env file on this inventory host
        env_file: /srv/calendar/.env       # read over SSH, parsed as compose reads it
        env_key: TELEGRAM_BOT_TOKEN        # the default
      diary:
        controller_env: EMOTION_BOT_TOKEN  # or: in the controller's environment
        api_url: https://api.telegram.org  # the default; a local Bot API server (http only to loopback)
        timeout: 10                        # seconds per Bot API request (default 10)

The record, `{state_dir}/telegram-webhooks.json` on the host the token is read from (the controller
for controller_env), keeps per bot the URL set and an HMAC-SHA256 of URL and secret keyed with the
bot's token: it tells whether a webhook already has the asked-for secret, and says nothing of the secret
to whoever reads the file without the token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remediations.actions import remote_write
from remediations.actions.botapi import DEFAULT_API, DEFAULT_TIMEOUT, check_api_url
from remediations.core import validate
from remediations.core.errors import UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.remote import Remote
from remediations.core.validate import shown

BOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
KEYS = {"host", "env_file", "env_key", "controller_env", "api_url", "timeout"}
RECORD_FILE = "telegram-webhooks.json"
VERSION = 1


def check_bot_name(value: Any, flag: str = "--bot") -> str:
    if not isinstance(value, str) or not BOT_NAME.fullmatch(value):
        raise UsageError(f"{flag} {shown(value)}: a bot name of telegram_bots (a letter or digit, then "
                         "letters, digits, _ . -; at most 64 characters)")  # fmt: skip
    return value


def check_env_name(value: Any, flag: str) -> str:
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
        raise UsageError(f"{flag} {shown(value)}: give the name of an environment variable (letters, digits "
                         "and _, not starting with a digit)")  # fmt: skip
    return value


@dataclass(frozen=True)
class Bot:
    name: str
    host: str | None  # the inventory host whose env file holds the token; None: the controller's env
    env_file: str | None
    env_key: str
    controller_env: str | None
    api_url: str = DEFAULT_API
    timeout: float = DEFAULT_TIMEOUT

    @property
    def target(self) -> str:
        """The name of the run's one target: the token's host, or the controller."""
        return self.host or f"bot:{self.name}"

    @property
    def source(self) -> str:
        """Where the token is, in words (never the token)."""
        if self.controller_env:
            return f"${self.controller_env} in the controller's environment"
        return f"{self.env_key} in {self.env_file} on {self.host}"


def declared(inventory: Inventory, name: str) -> Bot:
    """The bot `name` of `telegram_bots`, or UsageError (not declared, declared differently on two
    hosts, a bad declaration)."""
    where = f"{inventory.source}: telegram_bots.{name}"
    found: dict[str, Any] = {}
    names: set[str] = set()
    for host in inventory.hosts.values():
        bots = host.vars.get("telegram_bots")
        if bots in (None, ""):
            continue
        if not isinstance(bots, Mapping):
            raise UsageError(f"{inventory.source}: host {host.name}: telegram_bots must be a mapping of bot "
                             "names to {host, env_file, env_key} or {controller_env}")  # fmt: skip
        names.update(str(n) for n in bots)
        if name in bots:
            found[host.name] = bots[name]
    if not found:
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(f"--bot {name}: no such bot in telegram_bots (declared: {known})")
    specs = list(found.values())
    if any(spec != specs[0] for spec in specs[1:]):
        raise UsageError(f"{where} is declared differently on hosts {', '.join(sorted(found))}: declare it "
                         "once, in all's vars")  # fmt: skip
    return _bot(inventory, name, specs[0], where)


def _bot(inventory: Inventory, name: str, spec: Any, where: str) -> Bot:
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where}: give a mapping such as {{host: api-1, env_file: /srv/bot/.env}}")
    unknown = sorted(str(k) for k in spec if k not in KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(shown(k) for k in unknown)} (it takes "
                         f"{', '.join(sorted(KEYS))})")  # fmt: skip
    if ("env_file" in spec) == ("controller_env" in spec):
        raise UsageError(f"{where}: give exactly one of env_file (with host) or controller_env")
    api_url = check_api_url(spec.get("api_url", DEFAULT_API), where)
    try:
        timeout = float(validate.number(0, 120, above=True).parse(spec.get("timeout", DEFAULT_TIMEOUT)))
    except (ValueError, TypeError):
        raise UsageError(f"{where}: timeout {shown(spec.get('timeout'))}: give seconds > 0 and at most "
                         "120") from None  # fmt: skip
    if "controller_env" in spec:
        if "host" in spec or "env_key" in spec:
            raise UsageError(f"{where}: controller_env is read on the controller: leave out host and env_key")
        variable = check_env_name(spec["controller_env"], f"{where}: controller_env")
        return Bot(name, None, None, "", variable, api_url, timeout)
    host, path = spec.get("host"), spec.get("env_file")
    if not isinstance(host, str) or host not in inventory.hosts:
        raise UsageError(f"{where}: host {shown(host)}: name the inventory host whose env file holds the "
                         "token")  # fmt: skip
    if not isinstance(path, str) or not path.startswith("/") or re.search(r"[\x00-\x1f\x7f]", path) \
            or len(path) > 4096:  # fmt: skip
        raise UsageError(f"{where}: env_file {shown(path)}: give an absolute path on one line")
    key = check_env_name(spec.get("env_key", "TELEGRAM_BOT_TOKEN"), f"{where}: env_key")
    return Bot(name, host, path, key, None, api_url, timeout)


# --- the record of what was set -------------------------------------------------------------------


def record_path(host: Host) -> str:
    return f"{str(validate.value(host, 'state_dir')).rstrip('/')}/{RECORD_FILE}"


def fingerprint(token: str, url: str, secret: str | None) -> str:
    """What the record keeps of a webhook's URL and secret: an HMAC keyed with the bot's token."""
    digest = hmac.new(token.encode(), f"{url}\n{secret or ''}".encode(), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{digest}"


def read_record(remote: Remote, host: Host) -> dict[str, dict[str, str]]:
    """bot name -> {url, fingerprint, at, by}; {} when there is no record or it is unreadable."""
    done = remote.run(f"cat -- {shlex.quote(record_path(host))} 2>/dev/null || true", timeout=30)
    try:
        data = json.loads(done.stdout) if done.stdout.strip() else {}
    except ValueError:
        return {}
    bots = data.get("bots") if isinstance(data, dict) else None
    return {str(k): dict(v) for k, v in bots.items() if isinstance(v, dict)} if isinstance(bots, dict) else {}


def write_record(remote: Remote, host: Host, bots: Mapping[str, Mapping[str, str]]) -> None:
    text = json.dumps({"version": VERSION, "bots": dict(sorted(bots.items()))}, indent=1, sort_keys=True)
    remote_write.write(remote, remote_write.Write(record_path(host), (text + "\n").encode(), mode="600",
                                                  make_dir=True))  # fmt: skip


def entry(token: str, url: str, secret: str | None, by: str) -> dict[str, str]:
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"url": url, "fingerprint": fingerprint(token, url, secret), "at": at, "by": by}
