"""Notifications that arrive: big failures fit one message, Slack text is escaped, the lead line says
the outcome and the environment, and a refusal is reported in the API's own words.

Every message goes to `chat_apis`, a local HTTP server that enforces the documented limits of the
Telegram Bot API and Slack incoming webhooks (see its docstring).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediations.core.results import HostResult, RunResult, Status, StepResult
from remediations.reporting import notify
from remediations.reporting.notify import (
    Message,
    NotifyConfig,
    clip,
    environment_name,
    send,
    slack_escape,
    summary,
    utf16_units,
)
from remediations.reporting.redact import MASK, Redactor
from tests.labkit import write_local_inventory
from tests.unit.reporting.chat_apis import ChatAPIs, chat_apis
from tests.unit.reporting.test_notify_audit import TOKEN, Touch, engine_run

HOOK = "/services/T000/B000/hook-secret-XYZ"
ACTOR = "alice@ctl task=restart-api run=r-42"


@pytest.fixture(autouse=True)
def no_notify_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLACK_WEBHOOK", "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API", "NOTIFY_ON",
                 "NOTIFY_ENVIRONMENT"):  # fmt: skip
        monkeypatch.delenv(f"REMEDIATIONS_{name}", raising=False)


@pytest.fixture
def apis() -> Iterator[ChatAPIs]:
    with chat_apis() as running:
        yield running


def both(apis: ChatAPIs, chat_id: str = "-100123") -> NotifyConfig:
    return NotifyConfig(
        slack_webhook=apis.url + HOOK,
        telegram_bot_token=TOKEN,
        telegram_chat_id=chat_id,
        telegram_api=apis.url,
    )


def failing_run(failed: int, ok: int = 0, reason: str = "", task: str = "restart-api") -> RunResult:
    hosts = [
        HostResult(
            f"api{i:03}",
            [
                StepResult("facts", Status.OK, "read"),
                StepResult("health", Status.FAILED, reason or "unhealthy"),
            ],
        )
        for i in range(1, failed + 1)
    ]
    hosts += [HostResult(f"ok{i}", [StepResult("facts", Status.OK, "healthy")]) for i in range(ok)]
    return RunResult(task, False, hosts)


LONG_REASON = (
    "container api-1 unhealthy after 60 s; last health output: curl: (7) Failed to connect to "
    "127.0.0.1 port 8080 after 0 ms: Couldn't connect to server\n" * 5
)


# ---- the outage that produced nothing: 12 and 200 failed hosts ---------------------------------


@pytest.mark.parametrize("failed", [12, 200])
def test_a_big_failure_arrives_as_one_message_on_both_channels(apis: ChatAPIs, failed: int) -> None:
    warnings = send(both(apis), summary(failing_run(failed, reason=LONG_REASON), ACTOR), Redactor())
    assert warnings == []
    assert apis.refused == []
    assert sorted(d.channel for d in apis.delivered) == ["slack", "telegram"]
    for delivered in apis.delivered:
        lines = delivered.text.splitlines()
        assert lines[0] == f"FAILED: restart-api on {failed} of {failed} hosts"
        assert lines[1].startswith("- api001: failed: container api-1 unhealthy")
        assert lines[-1] == f"by {ACTOR}"
        shown = [line for line in lines if line.startswith("- api")]
        more = [int(line.split()[2]) for line in lines if line.startswith("… and ")]
        assert len(shown) + sum(more) == failed  # every host is shown or counted
        assert bool(more) is (failed == 200)  # 12 reasons, each cut to one line, fit
    slack = next(d for d in apis.delivered if d.channel == "slack")
    assert len(slack.text) <= notify.SLACK_LIMIT and not slack.truncated


def test_multibyte_reasons_fit_telegram_counted_in_utf16(apis: ChatAPIs) -> None:
    """An emoji is one code point but two UTF-16 units: a budget in code points would overflow."""
    run = failing_run(40, reason="🔥 disk full on /var/lib/docker 🔥 " * 8)
    assert send(both(apis), summary(run, ACTOR), Redactor()) == []
    telegram = next(d for d in apis.delivered if d.channel == "telegram")
    assert len(telegram.text) < utf16_units(telegram.text) <= 4096
    assert "\ufffd" not in telegram.text
    by_code_points = notify.Channel("telegram", 4096).render(summary(run, ACTOR), Redactor())
    url = f"{apis.url}/bot{TOKEN}/sendMessage"
    with pytest.raises(notify.Refused, match="message is too long"):
        notify._post_json(url, {"chat_id": "1", "text": by_code_points})


def test_the_old_summary_of_twelve_failures_would_not_fit() -> None:
    """The case of the issue, kept as a fact: the text the channel never got was over the limit."""
    text = "\n".join(f"- api{i}: failed: {LONG_REASON}" for i in range(12))
    assert utf16_units(text) > 4096


# ---- Slack escaping -----------------------------------------------------------------------------


def test_slack_text_is_escaped_and_shown_as_written(apis: ChatAPIs) -> None:
    reason = "probe said <@U123> & <!channel>: status>=500 <https://evil.example|click>"
    run = failing_run(1, reason=reason)
    assert send(NotifyConfig(slack_webhook=apis.url + HOOK), summary(run, ACTOR), Redactor()) == []
    [delivered] = apis.delivered
    assert delivered.controls == []  # no mention, no @channel, no link acted on
    assert f"- api001: failed: {reason}" in delivered.rendered.splitlines()
    assert "&amp; &lt;!channel&gt;" in delivered.text


def test_slack_escape_only_the_three_characters() -> None:
    assert slack_escape("a & b < c > d \"e\" 'f'") == "a &amp; b &lt; c &gt; d \"e\" 'f'"
    assert slack_escape("&lt;") == "&amp;lt;"  # already-escaped-looking text is shown as written


def test_telegram_gets_plain_text_unescaped(apis: ChatAPIs) -> None:
    config = NotifyConfig(telegram_bot_token=TOKEN, telegram_chat_id="1", telegram_api=apis.url)
    assert send(config, summary(failing_run(1, reason="a < b & c"), ACTOR), Redactor()) == []
    [delivered] = apis.delivered
    assert "- api001: failed: a < b & c" in delivered.text.splitlines()
    assert "parse_mode" not in delivered.payload


# ---- cutting never leaves half a secret mask, half an escape, or half a character ------------


def test_clip_never_cuts_inside_a_mask_or_an_escape() -> None:
    text = "x" * 10 + MASK + "tail"
    for limit in range(11, 16):
        cut = clip(text, limit)
        assert cut.endswith("…") and len(cut) <= limit
        assert cut.rstrip("…") in ("x" * 10, "x" * 10 + MASK, "x" * 10 + MASK + "t"[: max(0, limit - 16)])
    escaped = slack_escape("x" * 10 + "<y")
    for limit in range(11, 15):
        assert clip(escaped, limit).rstrip("…") in ("x" * 10, "x" * 10 + "&lt;")
    assert clip("ab🔥cd", 4, utf16_units) == "ab…"  # the emoji is 2 units: it does not fit whole


def test_a_secret_in_a_long_reason_is_masked_whole_or_not_at_all(apis: ChatAPIs) -> None:
    redactor = Redactor()
    redactor.learn({"db_password": "pw-0123456789"})
    reasons = ["x" * k + " pw-0123456789 " + "y" * 400 for k in range(270, 300)]
    hosts = [HostResult(f"db{k}", [StepResult("apply", Status.FAILED, r)]) for k, r in enumerate(reasons)]
    assert send(both(apis), summary(RunResult("rotate", False, hosts), ACTOR), redactor) == []
    for delivered in apis.delivered:
        assert "pw-0123" not in delivered.text and "0123456789" not in delivered.text
        for line in delivered.text.splitlines()[1:-2]:
            assert "*" not in line.replace(MASK, "")  # never a partial mask


# ---- the lead line ------------------------------------------------------------------------------


def run_of(*statuses: Status, check: bool = False) -> RunResult:
    hosts = [
        HostResult(f"h{i}", [StepResult("act", s, f"{s.value} here")]) for i, s in enumerate(statuses, 1)
    ]
    return RunResult("restart-api", check, hosts)


@pytest.mark.parametrize(
    ("run", "lead"),
    [
        (run_of(Status.FAILED, Status.CHANGED), "FAILED prod: restart-api on 1 of 2 hosts (1 changed)"),
        (run_of(Status.OK, Status.CHANGED, Status.OK), "CHANGED prod: restart-api on 1 of 3 hosts (2 ok)"),
        (run_of(Status.OK, Status.OK), "OK prod: restart-api on 2 of 2 hosts"),
        (run_of(Status.CHANGED, check=True), "WOULD CHANGE prod: restart-api (check) on 1 of 1 hosts"),
        (run_of(), "OK prod: restart-api on no hosts"),
        (run_of(Status.FAILED, Status.SKIPPED), "FAILED prod: restart-api on 1 of 2 hosts (1 skipped)"),
    ],
)
def test_lead_line_says_outcome_and_environment(run: RunResult, lead: str) -> None:
    message = summary(run, ACTOR, "prod", "r-42")
    assert message.head[0] == lead


def test_hosts_are_listed_failed_first_then_who_ran_it() -> None:
    run = run_of(Status.CHANGED, Status.OK, Status.FAILED, Status.SKIPPED, Status.FAILED)
    run.stopped_early = "2 host(s) failed"
    message = summary(run, ACTOR, "staging", "r-42")
    assert message.lines() == [
        "FAILED staging: restart-api on 2 of 5 hosts (1 ok, 1 changed, 1 skipped)",
        "stopped early: 2 host(s) failed",
        "- h3: failed: failed here",
        "- h5: failed: failed here",
        "- h1: changed: changed here",
        "- h4: skipped: skipped here",
        f"by {ACTOR}",
    ]
    assert "run r-42" in message.more


def test_a_multi_line_reason_is_one_line() -> None:
    run = failing_run(1, reason="first\n\n  second  \nthird")
    assert summary(run, ACTOR).items == ["- api001: failed: first ⏎ second ⏎ third"]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("inventories/prod.yml", "prod"),
        ("inventories/staging/hosts.yml", "staging"),
        ("/etc/remediations/prod-eu/inventory.yaml", "prod-eu"),
        ("inventories/hosts.yml", "hosts"),
        ("lab.yml", "lab"),
        ("<inventory>", ""),
    ],
)
def test_environment_from_the_inventory_name(source: str, name: str) -> None:
    assert environment_name(source) == name


def test_engine_leads_with_the_environment(tmp_path: Path, apis: ChatAPIs) -> None:
    path = write_local_inventory(
        tmp_path, {"h1": {}, "h2": {"fail": True}}, notify_slack_webhook=apis.url + HOOK
    )
    path = path.rename(tmp_path / "prod.yml")
    engine_run(path, Touch())
    [delivered] = apis.delivered
    assert delivered.rendered.splitlines()[:3] == [
        "FAILED prod: touch on 1 of 2 hosts (1 changed)",
        "- h2: failed: apply failed on purpose",
        "- h1: changed: touched",
    ]
    apis.delivered.clear()
    path = write_local_inventory(tmp_path, {"h1": {}}, notify_slack_webhook=apis.url + HOOK,
                                 notify_environment="payments-prod", notify_on="always")  # fmt: skip
    engine_run(path, Touch())
    assert apis.delivered[0].text.startswith("OK payments-prod: touch on 1 of 1 hosts")


# ---- refusals in the API's own words, the token never shown ------------------------------------


def test_telegram_refusal_shows_its_description_not_the_token(apis: ChatAPIs) -> None:
    warnings = send(both(apis, chat_id=" "), Message(["x"]), Redactor())
    assert warnings == ["notification to telegram failed: HTTP 400: Bad Request: chat_id is empty"]
    assert TOKEN not in "".join(warnings)


def test_slack_refusal_shows_its_error(apis: ChatAPIs) -> None:
    warnings = send(NotifyConfig(slack_webhook=apis.url + "/hooks/wrong-secret-path"), "x", Redactor())
    assert warnings == ["notification to slack failed: HTTP 404: no_service"]


def test_a_short_rate_limit_is_waited_out_once(apis: ChatAPIs) -> None:
    apis.rate_limit = {"slack": [1], "telegram": [1]}
    started = time.monotonic()
    assert send(both(apis), "FAILED prod: x", Redactor()) == []
    assert time.monotonic() - started >= 2  # each channel waited its retry_after
    assert apis.requests == 4 and len(apis.delivered) == 2


def test_a_long_rate_limit_is_a_warning(apis: ChatAPIs) -> None:
    apis.rate_limit = {"slack": [60], "telegram": [60]}
    started = time.monotonic()
    warnings = send(both(apis), "FAILED prod: x", Redactor())
    assert time.monotonic() - started < 5
    assert apis.requests == 2 and apis.delivered == []
    assert sorted(warnings) == [
        "notification to slack failed: HTTP 429: rate_limited (not retried: longer than 10 s)",
        "notification to telegram failed: HTTP 429: Too Many Requests: retry after 60 "
        "(not retried: longer than 10 s)",
    ]
    assert TOKEN not in "".join(warnings)


def test_rate_limited_twice_is_a_warning(apis: ChatAPIs) -> None:
    apis.rate_limit = {"telegram": [0, 0]}
    config = NotifyConfig(telegram_bot_token=TOKEN, telegram_chat_id="1", telegram_api=apis.url)
    assert send(config, "x", Redactor()) == [
        "notification to telegram failed: HTTP 429: Too Many Requests: retry after 0"
    ]
    assert apis.requests == 2
