"""The decisions of the rotations, without a host: what rotate-secret plans from its facts, which
keys rotate-aws-key takes for orphans, when it stops at a re-enabled key, what rotation-status fails."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import pytest

from remediations.actions.env_files import EnvFileFacts
from remediations.actions.rotation import EnvSide
from remediations.core.args import Args
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.inventory import Host
from remediations.facts import rotation as records
from remediations.facts.rotation import Record
from remediations.secrets.rotate_aws_key import RotateAwsKey, orphans, reenabled
from remediations.secrets.rotate_secret import Facts, RotateSecret

KEY, PATH = "API_TOKEN", "/srv/shop/.env"


def side(value: str = "old-value-0123456789", running: str | None = None, present: bool = True) -> EnvSide:
    ctx = cast(HostContext, SimpleNamespace(host=Host("api1", {})))
    text = f"APP_ENV=lab\n{KEY}={value}\n" if present else "APP_ENV=lab\n"
    file = EnvFileFacts(PATH, True, text, "0:0", "600")
    runs = value if running is None else running
    return EnvSide(ctx, cast(Any, None), file, [KEY], ["api"], [], {KEY: value if present else ""},
                   {"api": {KEY: runs}}, {})  # fmt: skip


def record(status: str, age: float = 10.0, **detail: Any) -> Record:
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)).isoformat(timespec="seconds")
    return Record("r1", "env", KEY, "rotate-secret", PATH, (KEY,), ("api",), f"{PATH}.X.bak", at, at, status,
                  detail=dict(detail))  # fmt: skip


def plan_of(task: RotateSecret, facts: Facts) -> tuple[str, str]:
    """(the step check mode records, "would …" or the reason) of the plan."""
    plan = task.decide(cast(HostContext, None), facts)
    if plan.empty:
        return plan.step, plan.reason
    [change] = plan.changes
    return plan.check_step or change.step, f"would {change.summary}"


CASES = [
    ("no record: rotate", {}, Facts(side(), None, None), "decide",
     "would rotate API_TOKEN in /srv/shop/.env"),
    ("rotated recently", {}, Facts(side(), record("done"), None), "decide", "was rotated"),
    ("recent, max-age 0", {"max_age": 0}, Facts(side(), record("done"), None), "decide", "would rotate"),
    ("recent but a service runs the old value", {},
     Facts(side(running="stale-value-0123456789"), record("done"), None), "decide", "would rotate"),
    ("rotated long ago", {}, Facts(side(), record("done", age=7200), None), "decide", "would rotate"),
    ("the given value is in place", {"value": "old-value-0123456789"}, Facts(side(), None, None), "decide",
     "already has the given value"),
    ("a given value differs", {"value": "new-value-0123456789"}, Facts(side(), record("done"), None),
     "decide", "would rotate"),
    ("given, the key absent (--create)", {"value": "", "create": True},
     Facts(side(value="", present=False), None, None), "decide", "would rotate"),
    ("unfinished, nothing written", {},
     Facts(side(), record("pending"), {KEY: "old-value-0123456789"}), "decide",
     "would abandon the unfinished rotation r1 (it changed nothing) and rotate anew"),
    ("unfinished, the backup gone", {}, Facts(side(), record("set"), None), "decide", "would abandon"),
    ("unfinished, written", {}, Facts(side(), record("set"), {KEY: "older-value-0123456789"}), "decide",
     "would finish the interrupted rotation r1: recreate api with the new API_TOKEN, or roll back to "
     "/srv/shop/.env.X.bak"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "facts", "step", "says"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_rotate_secret_decides(options: dict[str, Any], facts: Facts, step: str, says: str) -> None:
    task = RotateSecret(KEY, **options)
    assert plan_of(task, facts)[0] == step
    assert says in plan_of(task, facts)[1]


def test_rotate_secret_check_mode_shows_a_masked_diff() -> None:
    plan = RotateSecret(KEY).decide(cast(HostContext, None), Facts(side(), None, None))
    assert plan.changes[0].own_steps and plan.changes[0].diff == f"{PATH}: {KEY}: ***** → *****"


def values(args: Args, **given: Any) -> dict[str, Any]:
    return args.parse(given)


def test_rotate_secret_flags() -> None:
    parsed = values(RotateSecret.params, name=KEY)
    task = RotateSecret.from_values(parsed)
    assert (task.length, task.alphabet, task.max_age, task.services) == (32, "alnum", 3600, [])
    with pytest.raises(UsageError, match=r"^--name '': give the env file's variable name"):
        RotateSecret.from_values(values(RotateSecret.params))
    with pytest.raises(UsageError, match="leave out --length/--alphabet"):
        RotateSecret.from_values(values(RotateSecret.params, name=KEY, length="40", value_from_stdin=True))
    assert RotateSecret.params.audited({"name": KEY, "value_from_stdin": True})["value_from_stdin"] is True


def test_rotate_aws_key_target_and_defaults() -> None:
    parsed = values(RotateAwsKey.params, user="shop-app", env_host="api1")
    task = RotateAwsKey.from_values(parsed)
    assert (task.env_keys, task.grace, task.max_age) == (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                                         7 * 86400, 3600)  # fmt: skip
    assert RotateAwsKey.runs_on_controller and RotateAwsKey.controller_name(parsed) == "iam:shop-app"
    with pytest.raises(UsageError, match=r"^--user '': give an IAM user name"):
        RotateAwsKey.from_values(values(RotateAwsKey.params, env_host="api1"))


def key(key_id: str, status: str = "Active", created: dt.datetime | None = None) -> dict[str, Any]:
    return {"AccessKeyId": key_id, "Status": status, "CreateDate": created}


def test_orphans_are_the_keys_created_since_the_rotation_started() -> None:
    started = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    keys = [key("OLD", created=started - dt.timedelta(days=30)), key("NEW", created=started),
            key("EARLIER", created=started - dt.timedelta(seconds=1)), key("UNKNOWN")]  # fmt: skip
    assert orphans(keys, "OLD", started.isoformat()) == ["NEW"]
    assert orphans([key("OLD", created=started)], "OLD", started.isoformat()) == []


REENABLED = [
    ("one key", [key("NEW")], [record("done", old_key="OLD", new_key="NEW")], ""),
    ("retired key inactive", [key("NEW"), key("OLD", "Inactive")], [record("done", old_key="OLD")], ""),
    ("retired key active again", [key("NEW"), key("OLD")], [record("done", old_key="OLD")],
     "OLD, retired by rotation r1, is ACTIVE again"),
    ("someone else's key", [key("NEW"), key("OTHER")], [record("done", old_key="OLD")], ""),
    ("unfinished: resume decides", [key("NEW"), key("OLD")], [record("set", old_key="OLD")], ""),
    ("env key unknown: decide refuses", [key("X"), key("OLD")], [record("done", old_key="OLD")], ""),
]  # fmt: skip


@pytest.mark.parametrize(("keys", "found", "says"), [c[1:] for c in REENABLED],
                         ids=[c[0] for c in REENABLED])  # fmt: skip
def test_a_re_enabled_old_key_stops_the_run(
    keys: list[dict[str, Any]], found: list[Record], says: str
) -> None:
    got = reenabled(found, keys, "NEW")
    assert (says in got) if says else got == ""


def test_rotation_status_fails_unfinished_and_rolled_back_only() -> None:
    base = record("done")
    assert [records.healthy(replace(base, status=s)) for s in
            ("done", "abandoned", "pending", "set", "switched", "rolled-back", "failed")] == \
        [True, True, False, False, False, False, False]  # fmt: skip
    newest = records.newest_each([replace(base, id="a", status="set"), replace(base, id="b"),
                                  replace(base, id="c", name="OTHER")])  # fmt: skip
    assert [r.id for r in newest] == ["b", "c"]


@pytest.mark.parametrize(("text", "expected"), [("", None), ("  ", None), ("16", 16), ("4096", 4096)])
def test_an_empty_length_is_not_given(text: str, expected: int | None) -> None:
    assert records.length_arg(text, "--length") == expected
    assert records.alphabet_arg("", "--alphabet") is None
    assert records.alphabet_arg("hex", "--alphabet") == "hex"
