"""bot-webhook: a Telegram bot's webhook read (getWebhookInfo), set (setWebhook) or removed
(deleteWebhook), idempotently, with the token read where it lives and never shown.

facts   the token (an env file on the bot's host, read over SSH, or the controller's environment),
        getWebhookInfo, and this tool's record of what it set (declared.read_record);
decide  pure (`decide`): the URL and the secret asked for against Telegram's URL and the record
        (the Bot API never returns the secret: the record's HMAC says whether it is the one asked
        for), pending updates to drop;
apply   setWebhook / deleteWebhook, then the record;
verify  getWebhookInfo again: the URL is the one asked for (or none).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from remediations.actions.botapi import BotApi, check_secret_token, check_webhook_url, is_token
from remediations.bots import declared
from remediations.bots.declared import Bot
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory, controller_host
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age
from remediations.facts import envfile

INFO_FIELDS = ("url", "pending_update_count", "last_error_date", "last_error_message", "max_connections",
               "ip_address", "has_custom_certificate")  # fmt: skip


@dataclass(frozen=True)
class Facts:
    api: BotApi
    info: Mapping[str, Any]  # getWebhookInfo's result
    record: dict[str, dict[str, str]]  # the host's record of every bot (declared.read_record)
    token: str


@dataclass(frozen=True)
class Decision:
    call: str | None  # "setWebhook" | "deleteWebhook" | None: nothing to do
    reason: str


def describe(info: Mapping[str, Any], now: float) -> str:
    """getWebhookInfo in one line: the URL, pending updates, the last error and its age."""
    url = str(info.get("url") or "")
    parts = [f"webhook {url}" if url else "no webhook set (the bot polls with getUpdates, or is idle)",
             f"{int(info.get('pending_update_count') or 0)} pending update(s)"]  # fmt: skip
    if info.get("last_error_date"):
        age = human_age(now - float(info["last_error_date"]))
        parts.append(f"last error {age} ago: {info.get('last_error_message') or 'no message'}")
    if info.get("max_connections"):
        parts.append(f"max_connections {info['max_connections']}")
    if info.get("ip_address"):
        parts.append(f"ip {info['ip_address']}")
    return "; ".join(parts)


def summary(info: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The fields of getWebhookInfo a person or a script reads, the last error's age added."""
    found = {k: info.get(k) for k in INFO_FIELDS}
    last = info.get("last_error_date")
    found["last_error_age"] = round(now - float(last)) if last else None
    return found


def decide(action: str, url: str | None, wanted: str, drop_pending: bool, info: Mapping[str, Any],
           recorded: Mapping[str, str] | None) -> Decision:  # fmt: skip
    """Pure: what to call, if anything. `wanted` is the fingerprint of the URL and secret asked for."""
    current = str(info.get("url") or "")
    pending = int(info.get("pending_update_count") or 0)
    drop = drop_pending and pending > 0
    if action == "delete":
        if current and drop:
            return Decision("deleteWebhook", f"delete the webhook {current}, dropping {pending} pending "
                            "update(s)")  # fmt: skip
        if current:
            return Decision("deleteWebhook", f"delete the webhook {current}")
        if drop:
            return Decision("deleteWebhook", f"drop {pending} pending update(s) (no webhook is set)")
        return Decision(None, "no webhook is set")
    if current != url:
        was = f"now {current}" if current else "none is set now"
        return Decision("setWebhook", f"set the webhook to {url} ({was})")
    if recorded is None or recorded.get("url") != url or recorded.get("fingerprint") != wanted:
        why = "this tool has no record of setting it" if recorded is None else "its record differs"
        return Decision("setWebhook", f"set the webhook to {url} again: Telegram has that URL but never "
                        f"says its secret token, and {why}")  # fmt: skip
    if drop:
        return Decision("setWebhook", f"set the webhook to {url} again to drop {pending} pending update(s)")
    return Decision(None, f"the webhook is already {url}, with the secret token asked for")


class BotWebhook(Remediation):
    """A Telegram bot's webhook: read it (getWebhookInfo), set it or delete it; the token never shown.

    Bots are declared in the inventory (telegram_bots: name -> where the token is, api_url); the run
    goes where the token is (its host over SSH, or the controller). Without --set or --delete it only
    reports: URL, pending updates, the last error and its age, max_connections, ip_address.
    --set is ok when the webhook already has that URL and secret (this tool's record of the secret's
    HMAC says so; the Bot API never returns it), --delete when none is set.
    Example: inv bot-webhook --bot calendar --set https://calendar.example.com/webhook
    """

    task: ClassVar[str] = "bot-webhook"
    runs_on_controller: ClassVar[bool] = True
    host_help: ClassVar[str] = "not needed: the run goes where telegram_bots says the bot's token is"
    params = args(
        Arg("bot", "the bot, a name in the telegram_bots var", parse=declared.check_bot_name, required=True,
            example="calendar"),
        Arg("set", "set the webhook to this https URL (ports 443, 80, 88, 8443)", parse=check_webhook_url,
            example="https://calendar.example.com/webhook"),
        Arg("secret_token_from_env", "with --set: the variable of the controller's environment that holds "
            "the secret_token Telegram sends in X-Telegram-Bot-Api-Secret-Token",
            parse=declared.check_env_name, example="TELEGRAM_WEBHOOK_SECRET_TOKEN"),
        Arg("drop_pending", "with --set or --delete: drop the updates Telegram holds for the bot",
            kind="flag"),
        Arg("delete", "delete the webhook", kind="flag"),
    )  # fmt: skip

    def __init__(self, bot: str, url: str | None = None, secret: str | None = None, delete: bool = False,
                 drop_pending: bool = False, secret_env: str | None = None) -> None:  # fmt: skip
        if url is not None and delete:
            raise UsageError("give --set URL or --delete, not both")
        if secret is not None and url is None:
            raise UsageError("--secret-token-from-env goes with --set")
        if drop_pending and url is None and not delete:
            raise UsageError("--drop-pending goes with --set or --delete")
        self.name, self.url, self._secret, self.delete = bot, url, secret, delete
        self.drop_pending, self.secret_env = drop_pending, secret_env
        self.action = "set" if url is not None else "delete" if delete else None
        # Only a set or a delete changes something (and takes the lock); a report reads.
        self.changes = self.changes_hosts = self.action is not None  # type: ignore[misc]
        self.bot: Bot | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        env = values["secret_token_from_env"]
        secret = None
        if env is not None:
            secret = os.environ.get(env)
            if not secret:
                raise UsageError(f"--secret-token-from-env {env}: {env} is not set in this environment")
            check_secret_token(secret, f"--secret-token-from-env {env}")
        return cls(values["bot"], values["set"], secret, values["delete"], values["drop_pending"], env)

    def arguments(self) -> dict[str, Any]:
        return {"bot": self.name, "set": self.url, "secret_token_from_env": self.secret_env,
                "delete": self.delete, "drop_pending": self.drop_pending}  # fmt: skip

    @classmethod
    def targets(cls, inventory: Inventory, values: dict[str, Any]) -> list[Host]:
        bot = declared.declared(inventory, values["bot"])
        if bot.host is not None:
            return [inventory.hosts[bot.host]]
        return [controller_host(inventory, bot.target)]

    def prepare(self, inventory: Inventory) -> None:
        self.bot = declared.declared(inventory, self.name)
        if self.bot.controller_env:
            token = os.environ.get(self.bot.controller_env, "")
            if not token:
                raise UsageError(f"bot {self.name}: {self.bot.source} is not set")
            if not is_token(token):
                raise UsageError(f"bot {self.name}: {self.bot.source} is not a bot token (digits, ':', then "
                                 "letters, digits, _ and -); its value is not shown")  # fmt: skip

    def validate(self, host: Host) -> None:
        super().validate(host)
        bot = self.bot
        assert bot is not None  # prepare ran
        if host.name != bot.target:
            where = f"its token is on {bot.host}" if bot.host else "it takes its token from the controller"
            raise UsageError(f"--host {host.name}: bot {self.name} is not run there ({where}, {bot.source}); "
                             "leave out --host")  # fmt: skip

    def token(self, ctx: HostContext) -> str:
        """The bot's token, learnt by the redactor at once (masked wherever it could show up)."""
        bot = self.bot
        assert bot is not None
        if bot.controller_env:
            token = os.environ.get(bot.controller_env, "")
        else:
            assert bot.env_file is not None
            done = ctx.remote.run(f"cat -- {shlex.quote(bot.env_file)}", timeout=30)
            if not done.ok:
                raise HostError(f"reading {bot.env_file} failed (exit {done.exit_code}): "
                                f"{done.stderr.strip()[-200:] or 'no message'}")  # fmt: skip
            values = envfile.parse(done.stdout)
            for value in values.values():  # the file's other values are secrets too
                ctx.redactor.add_value(value)
            token = values.get(bot.env_key, "")
            if not token:
                raise HostError(f"{bot.env_key} is not set in {bot.env_file} on {bot.host}")
        ctx.redactor.add_value(token)
        if not is_token(token):
            raise HostError(f"{bot.source} is not a bot token (digits, ':', then letters, digits, _ and -); "
                            "its value is not shown")  # fmt: skip
        return token

    def gather(self, ctx: HostContext) -> Facts:
        bot = self.bot
        assert bot is not None
        with ctx.step("facts") as step:
            token = self.token(ctx)
            api = BotApi(bot.api_url, token, bot.timeout)
            info = api.call("getWebhookInfo") or {}
            if not isinstance(info, dict):
                raise HostError("getWebhookInfo: the answer's result is not an object")
            record = declared.read_record(ctx.remote, ctx.host) if self.action else {}
            now = time.time()
            waited = f" (waited {sum(api.waited):g} s for Telegram's 429 retry_after)" if api.waited else ""
            step.done(Status.OK, f"bot {self.name}: {describe(info, now)}{waited}", info=summary(info, now),
                      source=bot.source)  # fmt: skip
        return Facts(api, info, record, token)

    def run(self, ctx: HostContext) -> None:
        facts = self.gather(ctx)
        if self.action is None:  # a report: the facts step said it all
            return
        plan = self.decide(ctx, facts)
        if ctx.carry_out(plan):
            self.verify(ctx, facts, plan)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        assert self.action is not None
        wanted = declared.fingerprint(facts.token, self.url or "", self._secret)
        decision = decide(self.action, self.url, wanted, self.drop_pending, facts.info,
                          facts.record.get(self.name))  # fmt: skip
        if decision.call is None:
            return Plan.nothing(decision.reason)
        call = decision.call
        params: dict[str, Any] = {"url": self.url} if call == "setWebhook" else {}
        if self._secret is not None:
            params["secret_token"] = self._secret
        if self.drop_pending:
            params["drop_pending_updates"] = True
        shown = {k: ("*****" if k == "secret_token" else v) for k, v in params.items()}

        def apply(ctx: HostContext) -> str:
            said = facts.api.call(call, params)
            if said is not True:
                raise HostError(f"{call}: Telegram answered {said!r}, not true")
            records = dict(facts.record)
            if call == "setWebhook":
                records[self.name] = declared.entry(facts.token, self.url or "", self._secret, ctx.holder)
            else:
                records.pop(self.name, None)
            if records != facts.record:
                declared.write_record(ctx.remote, ctx.host, records)
            return decision.reason[0].upper() + decision.reason[1:]

        change = Change(call, decision.reason, apply, commands=(f"{call} {shown}",), data={"call": call})
        return Plan.of(change)

    def verify(self, ctx: HostContext, facts: Facts, plan: Plan) -> None:
        with ctx.step("verify") as step:
            info = facts.api.call("getWebhookInfo") or {}
            url = str(info.get("url") or "") if isinstance(info, dict) else ""
            if url != (self.url or ""):
                raise HostError(f"getWebhookInfo says the webhook is {url or 'none'} after "
                                f"{plan.changes[0].step}")  # fmt: skip
            step.done(Status.OK, f"getWebhookInfo: {describe(info, time.time())}")
