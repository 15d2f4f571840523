"""bot-webhook against a Bot API peer on loopback (tests/botapi_peer.py): the quartet of --set and of
--delete through the real front end, the report, the token never shown, 429 / 401 / a hanging server,
and bad input."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediations.actions.botapi import BotApi, BotApiError, check_api_url, check_webhook_url
from remediations.bots import webhook
from remediations.core.errors import UsageError
from tests import botapi_peer, labkit
from tests.quartet import quartet

TOKEN = "123456789:AAHfile-token_abcdefghijklmnopqrstuv"  # noqa: S105 - test values
ENV_TOKEN = "987654321:AAHenv-token_zyxwvutsrqponmlkjihgf"  # noqa: S105
OTHER_SECRET = "sk_live_other_value_in_the_env_file"  # noqa: S105
SECRET = "s3cret-Token_for_the_webhook"  # noqa: S105
URL = "https://calendar.example.com/webhook"


@pytest.fixture
def peer() -> Iterator[botapi_peer.Peer]:
    with botapi_peer.serving() as serving:
        serving.add_bot(TOKEN)
        serving.add_bot(ENV_TOKEN)
        yield serving


@pytest.fixture
def inventory(tmp_path: Path, peer: botapi_peer.Peer) -> Path:
    env_file = tmp_path / "srv" / ".env"
    env_file.parent.mkdir()
    env_file.write_text(f"# the bot's settings\nTELEGRAM_BOT_TOKEN='{TOKEN}'\nSTRIPE_KEY={OTHER_SECRET}\n")
    bots = {"calendar": {"host": "bothost", "env_file": str(env_file), "api_url": peer.url, "timeout": 1},
            "diary": {"controller_env": "DIARY_TOKEN", "api_url": peer.url + "/"}}  # fmt: skip
    data = {"all": {"vars": {"ansible_connection": "local", "lock_dir": str(tmp_path / "lock"),
                             "state_dir": str(tmp_path / "state"), "telegram_bots": bots},
                    "hosts": {"bothost": {}, "other": {}}}}  # fmt: skip
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args: str, inventory: Path, audit: Path, env: dict[str, str] | None = None) -> labkit.Ran:
    environ = {"DIARY_TOKEN": ENV_TOKEN, "HOOK_SECRET": SECRET, **(env or {})}
    return labkit.inv(*args, audit=audit, inventory=inventory, env=environ, timeout=60)


def never_shown(*texts: str) -> None:
    for text in texts:
        for secret in (TOKEN, ENV_TOKEN, SECRET, OTHER_SECRET, TOKEN.split(":")[1]):
            assert secret not in text


def test_decide() -> None:
    want = "hmac-sha256:abc"
    info = {"url": URL, "pending_update_count": 3}
    rec = {"url": URL, "fingerprint": want}
    cases = [
        ("set", {"url": ""}, None, False, "setWebhook", "none is set now"),
        ("set", {"url": "https://old.example.com/hook"}, rec, False, "setWebhook", "now https://old"),
        ("set", info, None, False, "setWebhook", "no record of setting it"),
        ("set", info, {**rec, "fingerprint": "hmac-sha256:other"}, False, "setWebhook", "record differs"),
        ("set", info, rec, False, None, "already"),
        ("set", info, rec, True, "setWebhook", "drop 3 pending"),
        ("set", {**info, "pending_update_count": 0}, rec, True, None, "already"),
        ("delete", info, rec, False, "deleteWebhook", f"delete the webhook {URL}"),
        ("delete", {"url": "", "pending_update_count": 2}, None, True, "deleteWebhook", "drop 2 pending"),
        ("delete", {"url": ""}, None, False, None, "no webhook is set"),
    ]
    for action, facts, recorded, drop, call, words in cases:
        assert isinstance(facts, dict)
        got = webhook.decide(action, URL, want, drop, facts, recorded)
        assert got.call == call and words in got.reason, (action, facts, recorded, drop, got)


def test_describe_gives_the_last_error_as_an_age() -> None:
    now = 1_000_000.0
    info = {"url": URL, "pending_update_count": 7, "last_error_date": now - 300,
            "last_error_message": "Wrong response from the webhook: 502 Bad Gateway", "max_connections": 40,
            "ip_address": "149.154.167.220"}  # fmt: skip
    text = webhook.describe(info, now)
    assert text == (f"webhook {URL}; 7 pending update(s); last error 5m ago: Wrong response from the "
                    "webhook: 502 Bad Gateway; max_connections 40; ip 149.154.167.220")  # fmt: skip
    assert webhook.summary(info, now)["last_error_age"] == 300
    assert webhook.describe({"url": "", "pending_update_count": 0}, now).startswith("no webhook set")


# --- the client against the peer ------------------------------------------------------------------


def test_client_answers_errors_and_429(peer: botapi_peer.Peer) -> None:
    api = BotApi(peer.url, TOKEN, timeout=2)
    empty = {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
    assert api.call("getWebhookInfo") == empty
    assert api.call("setWebhook", {"url": URL, "secret_token": SECRET}) is True
    assert peer.bots[TOKEN].secret_token == SECRET
    with pytest.raises(BotApiError, match="error 400: Bad Request: bad webhook: An HTTPS URL") as bad:
        api.call("setWebhook", {"url": "http://calendar.example.com/"})
    assert bad.value.code == 400
    with pytest.raises(BotApiError, match="error 404: Not Found: method not found"):
        api.call("getNothing")
    # 429: retry_after honoured, then the call goes through
    peer.rate_limited, peer.retry_after = 1, 1
    started = time.monotonic()
    assert api.call("getWebhookInfo")["url"] == URL
    assert time.monotonic() - started >= 1 and api.waited == [1.0]
    # a retry_after over the bound fails at once, saying so
    peer.rate_limited, peer.retry_after = 1, 100
    started = time.monotonic()
    with pytest.raises(BotApiError, match="retry after 100 s, more than the 30 s this waits") as slow:
        api.call("getWebhookInfo")
    assert time.monotonic() - started < 2 and slow.value.code == 429
    # every answer 429: at most three calls
    peer.rate_limited, peer.retry_after = 10, 0
    before = len(peer.calls)
    with pytest.raises(BotApiError, match="3 times"):
        api.call("getWebhookInfo")
    assert len(peer.calls) - before == 3
    peer.rate_limited = 0
    assert all(TOKEN not in str(e.value) for e in (bad, slow))


def test_client_unknown_or_malformed_token_and_a_hanging_server(peer: botapi_peer.Peer) -> None:
    unknown = "111111111:AAHnot-a-known-token_abcdefghijk"
    with pytest.raises(BotApiError, match="error 401: Unauthorized: Telegram does not know this bot") as e:
        BotApi(peer.url, unknown, timeout=2).call("getWebhookInfo")
    assert unknown not in str(e.value) and e.value.code == 401
    with pytest.raises(BotApiError, match="error 404: Not Found"):
        BotApi(peer.url, "not-a-token", timeout=2).call("getWebhookInfo")
    peer.hanging.set()
    started = time.monotonic()
    hung = r"getWebhookInfo at http://127\.0\.0\.1:\d+: no answer within 0\.5 s"
    with pytest.raises(BotApiError, match=hung):
        BotApi(peer.url, TOKEN, timeout=0.5).call("getWebhookInfo")
    assert time.monotonic() - started < 3
    peer.hanging.clear()
    with pytest.raises(BotApiError) as refused:
        BotApi("http://127.0.0.1:9", TOKEN, timeout=2).call("getWebhookInfo")
    assert "ConnectionRefusedError" in str(refused.value) and TOKEN not in str(refused.value)


def test_client_masks_the_token_in_the_http_librarys_own_words() -> None:
    """An exception whose text holds the URL (an ssl or proxy error does): the token is masked."""

    def failing(scheme: str, host: str, port: int | None, timeout: float) -> Any:
        raise OSError(f"cannot reach https://{host}/bot{TOKEN}/getWebhookInfo")

    with pytest.raises(BotApiError) as caught:
        BotApi("https://api.telegram.org", TOKEN, connect=failing).call("getWebhookInfo")
    assert TOKEN not in str(caught.value) and "bot<token>/getWebhookInfo" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://calendar.example.com/webhook", "https://"),
        ("https://calendar.example.com:8080/webhook", "ports 443, 80, 88 or 8443"),
        ("https://calendar.example.com:99999/webhook", "ports"),
        ("https:///webhook", "with a host"),
        ("https://x.example.com/a\nb", "on one line"),
        ("https://x.example.com/a b", "on one line"),
        ("https://x.example.com/#frag", "no fragment"),
        ("https://x.example.com/" + "a" * 100_000, "at most 2048"),
        ("$(touch /tmp/pwned)", "https://"),
    ],
)
def test_webhook_url_refused(value: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        check_webhook_url(value)
    assert len(str(caught.value)) < 300


def test_api_url_rules() -> None:
    assert check_api_url("https://api.telegram.org/", "x") == "https://api.telegram.org"
    assert check_api_url("http://127.0.0.1:8081", "x") == "http://127.0.0.1:8081"
    assert check_api_url("http://[::1]:8081/prefix", "x") == "http://[::1]:8081/prefix"
    for bad in ("http://api.telegram.org", "http://10.0.0.5:8081", "ftp://x", "https://u:p@api.telegram.org",
                "https://api.telegram.org/?q=1", "https://api.telegram.org\n", 5):
        with pytest.raises(UsageError, match="api_url"):
            check_api_url(bad, "x")


# --- the real front end ----------------------------------------------------------------------------


def hook(peer: botapi_peer.Peer, token: str = TOKEN) -> tuple[str, str | None, int]:
    bot = peer.bots[token]
    return bot.url, bot.secret_token, bot.pending_update_count


def test_set_with_a_secret_is_the_quartet_and_the_token_is_never_shown(
    tmp_path: Path, inventory: Path, peer: botapi_peer.Peer
) -> None:
    audit = tmp_path / "audit.jsonl"
    environ = {"DIARY_TOKEN": ENV_TOKEN, "HOOK_SECRET": SECRET}
    runs = quartet("bot-webhook", "--bot", "calendar", "--set", URL, "--secret-token-from-env", "HOOK_SECRET",
                   hosts=["bothost"], audit=audit, state=lambda: hook(peer), inventory=inventory,
                   env=environ)  # fmt: skip
    assert hook(peer) == (URL, SECRET, 0)
    check = runs.check.host("bothost")
    assert check["steps"][-1]["message"] == f"would set the webhook to {URL} (none is set now)"
    assert runs.again.host("bothost")["steps"][-1]["message"] == (
        f"the webhook is already {URL}, with the secret token asked for")
    record = json.loads((tmp_path / "state" / "telegram-webhooks.json").read_text())
    assert record["bots"]["calendar"]["url"] == URL
    assert record["bots"]["calendar"]["fingerprint"].startswith("hmac-sha256:")
    assert oct((tmp_path / "state" / "telegram-webhooks.json").stat().st_mode & 0o777) == "0o600"
    texts = [r.stdout + r.stderr for r in (runs.check, runs.apply, runs.again, runs.check_again)]
    never_shown(*texts, audit.read_text(), json.dumps(record))
    # the token travelled in the request path only, to the peer
    assert all(p.startswith(f"/bot{TOKEN}/") for p in peer.paths)
    # another secret is a change; the same again is ok
    another = "another_secret"
    other = run("bot-webhook", "--bot", "calendar", "--set", URL, "--secret-token-from-env", "HOOK_SECRET",
                "--json", inventory=inventory, audit=audit, env={"HOOK_SECRET": another})  # fmt: skip
    assert other.host("bothost")["status"] == "changed" and peer.bots[TOKEN].secret_token == another
    assert "its record differs" in other.stdout
    # no secret asked for: set again, without one
    plain = run("bot-webhook", "--bot", "calendar", "--set", URL, "--json", inventory=inventory, audit=audit)
    assert plain.host("bothost")["status"] == "changed" and peer.bots[TOKEN].secret_token is None
    never_shown(other.stdout, other.stderr, plain.stdout, audit.read_text())


def test_set_when_telegram_has_the_url_but_the_tool_no_record(
    tmp_path: Path, inventory: Path, peer: botapi_peer.Peer
) -> None:
    peer.bots[TOKEN].url, peer.bots[TOKEN].secret_token = URL, "set_by_hand"
    ran = run("bot-webhook", "--bot", "calendar", "--set", URL, "--json", inventory=inventory,
              audit=tmp_path / "a.jsonl")  # fmt: skip
    assert ran.host("bothost")["status"] == "changed" and "no record of setting it" in ran.stdout
    assert peer.bots[TOKEN].secret_token is None


def test_delete_is_the_quartet_and_drop_pending(
    tmp_path: Path, inventory: Path, peer: botapi_peer.Peer
) -> None:
    audit = tmp_path / "audit.jsonl"
    environ = {"DIARY_TOKEN": ENV_TOKEN}
    first = run("bot-webhook", "--bot", "diary", "--set", URL, "--json", inventory=inventory, audit=audit)
    assert first.host("bot:diary")["status"] == "changed" and hook(peer, ENV_TOKEN)[0] == URL
    peer.bots[ENV_TOKEN].pending_update_count = 5
    quartet("bot-webhook", "--bot", "diary", "--delete", hosts=["bot:diary"], audit=audit,
            state=lambda: hook(peer, ENV_TOKEN), inventory=inventory, env=environ)  # fmt: skip
    assert hook(peer, ENV_TOKEN) == ("", None, 5)
    dropped = run("bot-webhook", "--bot", "diary", "--delete", "--drop-pending", "--json",
                  inventory=inventory, audit=audit)  # fmt: skip
    assert dropped.host("bot:diary")["status"] == "changed" and hook(peer, ENV_TOKEN) == ("", None, 0)
    again = run("bot-webhook", "--bot", "diary", "--delete", "--drop-pending", "--json", inventory=inventory,
                audit=audit)  # fmt: skip
    assert again.host("bot:diary")["status"] == "ok"
    record = json.loads((tmp_path / "state" / "telegram-webhooks.json").read_text())
    assert "diary" not in record["bots"]
    never_shown(first.stdout, dropped.stdout, again.stdout, audit.read_text())


def test_report_reads_getwebhookinfo(tmp_path: Path, inventory: Path, peer: botapi_peer.Peer) -> None:
    bot = peer.bots[TOKEN]
    bot.url, bot.pending_update_count, bot.ip_address = URL, 12, "149.154.167.220"
    bot.last_error_date, bot.last_error_message = int(time.time()) - 7200, "Connection timed out"
    for extra in ((), ("--check",)):
        ran = run("bot-webhook", "--bot", "calendar", *extra, "--json", inventory=inventory,
                  audit=tmp_path / "a.jsonl")  # fmt: skip
        assert ran.code == 0, ran.stderr
        [facts] = ran.host("bothost")["steps"]
        assert facts["status"] == "ok"
        assert (f"bot calendar: webhook {URL}; 12 pending update(s); last error 2.0h ago: Connection timed "
                "out; max_connections 40; ip 149.154.167.220") == facts["message"]  # fmt: skip
        info = facts["data"]["info"]
        assert (info["url"], info["pending_update_count"], info["max_connections"], info["ip_address"]) == (
            URL, 12, 40, "149.154.167.220")
        assert 7190 <= info["last_error_age"] <= 7300 and info["last_error_message"] == "Connection timed out"
        assert facts["data"]["source"].startswith("TELEGRAM_BOT_TOKEN in ")
        never_shown(ran.stdout, ran.stderr)
    assert peer.methods() == ["getWebhookInfo", "getWebhookInfo"]  # a report changes nothing
    assert not (tmp_path / "lock").exists()  # and takes no lock
    text = run("bot-webhook", "--bot", "calendar", inventory=inventory, audit=tmp_path / "a.jsonl")
    assert "last error 2.0h ago: Connection timed out" in text.stdout


def test_faults_fail_in_words_within_bounds(tmp_path: Path, inventory: Path, peer: botapi_peer.Peer) -> None:
    audit = tmp_path / "audit.jsonl"
    peer.rate_limited, peer.retry_after = 1, 1
    ok = run("bot-webhook", "--bot", "calendar", "--set", URL, "--json", inventory=inventory, audit=audit)
    assert ok.host("bothost")["status"] == "changed", ok.stdout
    assert "waited 1 s for Telegram's 429 retry_after" in ok.stdout
    del peer.bots[TOKEN]  # the token was revoked
    revoked = run("bot-webhook", "--bot", "calendar", "--delete", "--json", inventory=inventory, audit=audit)
    assert revoked.code == 1 and "error 401: Unauthorized" in revoked.host("bothost")["message"]
    peer.add_bot(TOKEN)
    peer.hanging.set()
    started = time.monotonic()
    hung = run("bot-webhook", "--bot", "calendar", "--json", inventory=inventory, audit=audit)
    assert time.monotonic() - started < 20
    assert hung.code == 1 and "no answer within 1 s" in hung.host("bothost")["message"]
    peer.hanging.clear()
    never_shown(ok.stdout, revoked.stdout, hung.stdout, revoked.stderr, audit.read_text())


def test_env_file_problems_fail_the_host_without_the_value(
    tmp_path: Path, inventory: Path, peer: botapi_peer.Peer
) -> None:
    env_file = tmp_path / "srv" / ".env"
    env_file.write_text(f"OTHER=1\nSTRIPE_KEY={OTHER_SECRET}\n")
    audit = tmp_path / "a.jsonl"
    missing = run("bot-webhook", "--bot", "calendar", "--json", inventory=inventory, audit=audit)
    assert missing.code == 1 and f"TELEGRAM_BOT_TOKEN is not set in {env_file} on bothost" in missing.stdout
    env_file.write_text("TELEGRAM_BOT_TOKEN=not a token at all\n")
    bad = run("bot-webhook", "--bot", "calendar", "--json", inventory=inventory, audit=tmp_path / "a.jsonl")
    assert bad.code == 1 and "is not a bot token" in bad.stdout and "not a token at all" not in bad.stdout
    env_file.unlink()
    gone = run("bot-webhook", "--bot", "calendar", "--json", inventory=inventory, audit=tmp_path / "a.jsonl")
    assert gone.code == 1 and f"reading {env_file} failed" in gone.stdout
    assert peer.calls == []  # nothing was sent without a token


BAD = [
    (("--bot", "cal\nendar"), "--bot 'cal\\nendar'"),
    (("--bot", "x" * 100_000), "--bot 'xxx"),
    (("--bot", "$(touch /tmp/pwned)"), "a bot name"),
    (("--bot", "nosuch"), "no such bot in telegram_bots (declared: calendar, diary)"),
    (("--bot", "calendar", "--set", "http://calendar.example.com/webhook"), "https://"),
    (("--bot", "calendar", "--set", "https://calendar.example.com:8080/"), "ports 443, 80, 88 or 8443"),
    (("--bot", "calendar", "--set", "https://x.example.com/\n; reboot"), "on one line"),
    (("--bot", "calendar", "--set", URL, "--delete"), "not both"),
    (("--bot", "calendar", "--drop-pending"), "--drop-pending goes with"),
    (("--bot", "calendar", "--secret-token-from-env", "HOOK_SECRET"), "goes with --set"),
    (("--bot", "calendar", "--set", URL, "--secret-token-from-env", "NOT_SET_HERE"), "is not set"),
    (("--bot", "calendar", "--set", URL, "--secret-token-from-env", "BAD_SECRET"), "1-256 characters"),
    (("--bot", "calendar", "--set", URL, "--secret-token-from-env", "A;B"), "name of an environment"),
    (("--bot", "calendar", "--host", "other"), "--host other: bot calendar is not run there"),
    (("--bot", "diary", "--host", "bothost"), "it takes its token from the controller"),
    (("--bot", "diary"), "$DIARY_TOKEN in the controller's environment is not set"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, inventory: Path, peer: botapi_peer.Peer,
                                      args: tuple[str, ...], words: str) -> None:  # fmt: skip
    assert "DIARY_TOKEN" not in os.environ
    env = {"BAD_SECRET": "has spaces; and $(x)", "HOOK_SECRET": SECRET}
    if args != ("--bot", "diary"):
        env["DIARY_TOKEN"] = ENV_TOKEN
    ran = labkit.inv("bot-webhook", *args, audit=tmp_path / "a.jsonl", inventory=inventory, env=env,
                     timeout=60)  # fmt: skip
    assert ran.code == 2, (ran.stdout, ran.stderr)
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], ran.stderr
    assert len(lines[0]) < 400 and "has spaces" not in lines[0]
    assert peer.calls == [] and not (tmp_path / "lock").exists()


BAD_DECLARATIONS = [
    ({"host": "bothost", "env_file": "relative/.env"}, "env_file 'relative/.env'"),
    ({"host": "nosuch", "env_file": "/srv/.env"}, "host 'nosuch'"),
    ({"env_file": "/srv/.env"}, "host None"),
    ({"controller_env": "X", "env_file": "/srv/.env"}, "exactly one of"),
    ({"controller_env": "X", "api_url": "http://198.51.100.7:8081"}, "api_url"),
    ({"controller_env": "X", "timeout": "soon"}, "timeout 'soon'"),
    ({"controller_env": "X", "tokn": 1}, "unknown key(s) 'tokn'"),
    ({"controller_env": "X; reboot"}, "controller_env 'X; reboot'"),
    ("a string", "give a mapping"),
]


@pytest.mark.parametrize(("spec", "words"), BAD_DECLARATIONS)
def test_bad_declarations(tmp_path: Path, spec: Any, words: str) -> None:
    """Read as a run reads them (the inventory loaded from its file); the first one also through the
    real front end."""
    from remediations.bots.declared import declared
    from remediations.core.inventory import load

    data = {"all": {"vars": {"ansible_connection": "local", "lock_dir": str(tmp_path / "lock"),
                             "telegram_bots": {"b": spec}}, "hosts": {"bothost": {}}}}  # fmt: skip
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=re.escape(words)) as caught:
        declared(load(path), "b")
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{path}: telegram_bots.b: ")
    if spec == BAD_DECLARATIONS[0][0]:
        ran = labkit.inv("bot-webhook", "--bot", "b", audit=tmp_path / "a.jsonl", inventory=path, timeout=60)
        assert ran.code == 2 and words in ran.stderr and len(ran.stderr.splitlines()) == 1, ran.stderr
