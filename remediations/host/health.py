"""health: the daily health check of the runbooks, read-only, one round trip per host.

facts     (remediations.facts.health) one shell command: every container of the compose project
          (`docker inspect`), the count of error lines in each one's logs over the last 24 h, the
          HTTP health URL fetched on the host, `stat -f` of the filesystems that matter, the newest
          file in the backup directory, and the configured dependency probes (TCP ports, HTTP URLs)
          tried from the host, Prometheus metrics endpoints scraped on the host and held to their
          thresholds (facts.metrics), `systemctl show` of the host's systemd units (systemd_units)
          and each one's health URL; the newest backup in S3, when configured, is listed from the
          controller; on a WAL-archiving PostgreSQL host, pg_stat_archiver (psql as the database's
          OS user);
evaluate  pure: each fact against its threshold gives a `Check` that is green, yellow or red;
report    one step per check (a red check fails the host), then a `health` step naming the red
          checks. `--json` carries every check with its value, threshold and colour.

Nothing is changed on any host, so there is no lock and no check mode difference.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from remediations.actions import image_record as images
from remediations.actions import s3client
from remediations.core.args import UNITS, Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.results import RunResult, Status
from remediations.facts.compose import CONFIG_ERROR, Container, unknown_service
from remediations.facts.health import LOG_WINDOW, HealthFacts, Probe, Settings, facts_command, parse_facts
from remediations.facts.metrics import MAX_BODY_BYTES, Scrape, judge, parse_exposition
from remediations.facts.postgres import archiver_failing, describe_archiver
from remediations.facts.systemd import UnitFacts

GREEN, YELLOW, RED = "green", "yellow", "red"


@dataclass(frozen=True)
class Check:
    """One health check's verdict, with what was measured and what it was held against."""

    name: str
    colour: str
    value: Any
    threshold: Any
    detail: str

    @property
    def status(self) -> Status:
        return Status.FAILED if self.colour == RED else Status.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "colour": self.colour,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


# --- evaluate ------------------------------------------------------------------------------------


def evaluate(
    settings: Settings, facts: HealthFacts, s3_newest: float | None = None, s3_error: str = ""
) -> list[Check]:
    """Pure: every check's colour from the facts and the thresholds."""
    checks: list[Check] = []
    checks += service_checks(settings, facts)
    urls = [(settings.http_url, facts.http)] if settings.http_url and facts.http is not None else []
    urls += [(url, facts.service_http.get(service, (1, "not run"))) for service, url in settings.service_urls]
    for url, (code, body) in urls:
        checks.append(
            Check(
                f"http {url}",
                GREEN if code == 0 else RED,
                "answers" if code == 0 else f"exit {code}",
                "answers",
                "answers" if code == 0 else (body or f"exit {code}")[:200],
            )
        )
    checks += [unit_check(unit) for unit in facts.units]
    checks += disk_checks(settings, facts)
    if settings.backup_dir:
        checks.append(
            backup_check(
                f"backup age {settings.backup_dir}",
                settings.backup_max_age_hours,
                facts.now,
                facts.newest_backup,
                "directory does not exist" if facts.backup_missing else "no backup file",
            )
        )
    if settings.backup_s3:
        checks.append(
            backup_check(
                f"backup age {settings.backup_s3}",
                settings.backup_max_age_hours,
                facts.now or time.time(),
                s3_newest,
                s3_error or "no backup object",
            )
        )
    if settings.pg_archiver is not None:
        checks.append(archiver_check(facts.pg_archiver))
    for index, probe in enumerate(settings.probes):
        if probe.kind == "metrics":
            checks += metrics_checks(probe, facts.metrics.get(index))
            continue
        code, body = facts.probes.get(index, (1, "not run"))
        what = f"{probe.kind} {probe.target}"
        detail = f"{what} answers" if code == 0 else f"{what} failed: {body or f'exit {code}'}"
        checks.append(
            Check(
                f"probe {probe.name}",
                GREEN if code == 0 else RED,
                "up" if code == 0 else "down",
                "up",
                detail[:200],
            )
        )
    return checks


def metrics_checks(probe: Probe, scrape: Scrape | None) -> list[Check]:
    """A metrics probe: one check per rule (`metrics NAME: RULE`), or one red check for the probe
    when the endpoint could not be read: fetch failed, too big, not Prometheus text."""
    name = f"metrics {probe.name}"
    rules = "; ".join(str(r) for r in probe.rules)
    if scrape is None or scrape.code != 0:
        why = "not run" if scrape is None else (scrape.text or f"exit {scrape.code}")
        return [Check(name, RED, "unreadable", rules, f"{probe.target}: fetch failed: {why}"[:200])]
    if scrape.cut:
        return [Check(name, RED, "too big", rules, f"{probe.target} sent {scrape.size} bytes, more than "
                      f"the {MAX_BODY_BYTES} read")]  # fmt: skip
    try:
        samples = parse_exposition(scrape.text)
    except ValueError as exc:
        return [Check(name, RED, "unparsable", rules,
                      f"{probe.target}: not Prometheus text format: {exc}"[:200])]  # fmt: skip
    verdicts = [judge(rule, samples) for rule in probe.rules]
    return [Check(f"{name}: {v.rule}", v.colour, v.value, str(v.rule), v.detail[:200]) for v in verdicts]


def service_checks(settings: Settings, facts: HealthFacts) -> list[Check]:
    if settings.project is None or settings.services == ():
        return []
    if facts.project_missing:
        return [
            Check(
                "compose project",
                RED,
                "missing",
                "exists",
                f"project directory {settings.project.directory} does not exist",
            )
        ]
    if facts.compose == "none":
        return [
            Check(
                "compose project",
                RED,
                "no compose",
                "docker compose",
                "neither 'docker compose' nor 'docker-compose' works",
            )
        ]
    if facts.error:
        misconfigured = facts.error.startswith(CONFIG_ERROR)
        return [Check("compose project", RED, "misconfigured" if misconfigured else "unreadable", "readable",
                      facts.error)]  # fmt: skip
    by_service: dict[str, list[Container]] = {}
    for service, container in facts.containers:
        by_service.setdefault(service, []).append(container)
    wanted = settings.services if settings.services is not None else tuple(sorted(by_service))
    if not wanted:
        return [
            Check(
                "compose project",
                RED,
                "no containers",
                "containers",
                f"project {settings.project.name} has no containers",
            )
        ]
    checks = []
    for service in wanted:
        containers = by_service.get(service, [])
        checks.append(service_state(service, containers))
        errors = sum(facts.log_errors.get(c.id[:12], 0) for c in containers)
        if containers:
            colour = GREEN if errors == 0 else YELLOW if errors <= settings.log_errors_max else RED
            checks.append(
                Check(
                    f"log errors {service}",
                    colour,
                    errors,
                    settings.log_errors_max,
                    f"{errors} error line(s) in the last {LOG_WINDOW}",
                )
            )
    return checks


def service_state(service: str, containers: Sequence[Container]) -> Check:
    name = f"service {service}"
    if not containers:
        return Check(name, RED, "missing", "running", f"no {service} container exists")
    worst = GREEN
    states = []
    for c in containers:
        state = c.state + (f" ({c.health})" if c.health else "")
        states.append(f"{c.name} {state}")
        if c.state != "running" or c.health == "unhealthy":
            worst = RED
        elif c.health == "starting" and worst == GREEN:
            worst = YELLOW
    detail = "; ".join(states)
    bad = [c for c in containers if c.state != "running" or c.health == "unhealthy"]
    if bad and bad[0].health == "unhealthy" and bad[0].health_output:
        detail += f": {bad[0].health_output[:150]}"
    value = "running" if worst != RED else (bad[0].health if bad[0].state == "running" else bad[0].state)
    return Check(name, worst, value, "running (healthy)", detail)


def unit_check(facts: UnitFacts) -> Check:
    """A systemd service: green when active and its URL answers, yellow while it starts, else red."""
    healthy, why = facts.verdict()
    colour = GREEN if healthy else YELLOW if facts.starting else RED
    value = f"{facts.active_state}/{facts.sub_state}" if facts.active_state else "unknown"
    return Check(f"unit {facts.unit}", colour, value, "active", why[:200])


def disk_checks(settings: Settings, facts: HealthFacts) -> list[Check]:
    checks = []
    seen: set[tuple[int, int]] = set()
    for path, usage in facts.filesystems:
        name = f"disk {path}"
        if isinstance(usage, str):
            checks.append(Check(name, RED, None, settings.disk_max, f"{path}: {usage}"))
            continue
        key = (usage.total, usage.used + usage.available)
        if key in seen and path not in settings.disk_paths:
            continue  # Docker's root on a filesystem already reported
        seen.add(key)
        pct = round(usage.percent, 1)
        colour = RED if pct > settings.disk_max else YELLOW if pct > settings.disk_warn else GREEN
        checks.append(Check(name, colour, pct, settings.disk_max, usage.describe()))
    return checks


def backup_check(name: str, max_hours: float, now: float, newest: float | None, none_why: str) -> Check:
    if newest is None:
        return Check(name, RED, None, max_hours, none_why)
    hours = round(max(0.0, now - newest) / 3600, 1)
    colour = RED if hours > max_hours else GREEN
    return Check(name, colour, hours, max_hours, f"newest backup is {hours:g} h old (limit {max_hours:g} h)")


def archiver_check(answer: tuple[int, str] | None) -> Check:
    """Red while PostgreSQL's archiver is failing: pg_wal/ fills up and point-in-time recovery
    cannot go past the last archived segment. Red too when PostgreSQL does not answer."""
    name, threshold = "postgres archiver", "archiving"
    code, body = answer or (1, "not run")
    if code != 0:
        return Check(name, RED, "unknown", threshold, f"psql failed: {body[-200:] or f'exit {code}'}")
    try:
        data = json.loads(body.splitlines()[-1])
        archiver = dict(data.get("archiver") or {})
        mode = str(data.get("archive_mode") or "")
    except (ValueError, IndexError, AttributeError):
        return Check(name, RED, "unknown", threshold, "psql printed something that is not JSON")
    if archiver_failing(archiver):
        return Check(name, RED, "failing", threshold, describe_archiver(archiver))
    detail = describe_archiver(archiver)
    if mode == "off":
        # Nothing fails, but nothing is archived either: worth a look on a host with an archive.
        return Check(name, YELLOW, "off", threshold, f"archive_mode is off; {detail}")
    if archiver.get("last_archived_wal"):
        detail += f"; last archived {archiver['last_archived_wal']} at {archiver.get('last_archived_time')}"
    return Check(name, GREEN, "archiving", threshold, detail)


# --- S3 (from the controller) ---------------------------------------------------------------------


def newest_s3_object(url: str, host_vars: Mapping[str, Any]) -> tuple[float | None, str]:
    """(LastModified of the newest object under s3://bucket/prefix, error)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    try:
        client = s3client.Client(host_vars, "health", strict=False).client  # as backup-check's
        newest: float | None = None
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents") or []:
                stamp = item["LastModified"].timestamp()
                newest = stamp if newest is None or stamp > newest else newest
        return newest, ""
    except (BotoCoreError, ClientError, UsageError) as exc:
        return None, f"S3: {exc}"[:200]


# --- the remediation -----------------------------------------------------------------------------


def comma_services(value: Any, flag: str) -> list[str]:
    """`--service a --service b`, or a comma list in one value (`--service a,b`), or both."""
    from remediations.core.validate import check_services

    given = [value] if isinstance(value, str) else list(value)
    return check_services([s.strip() for item in given for s in str(item).split(",") if s.strip()], flag)


class Health(Remediation):
    """The daily health check, read-only: services, systemd units, HTTP health, disks, backup age, log
    errors, probes, and the WAL archiver of a PostgreSQL host that archives (wal_archive_dir).

    Per host in one round trip. Thresholds and probes come from inventory vars (health_*). Prints a
    table of every check (green / yellow / red); --json carries each with its value and threshold.
    Exit code 1 when any check is red.
    """

    task: ClassVar[str] = "health"
    cron_safe: ClassVar[bool] = True
    params = args(
        Arg("service", "check only these compose services (repeat, or a comma list; default: all of them)",
            kind="list", parse=comma_services, default=(), example="api"),
        replace(UNITS, help="check only these systemd services (repeat; default: all in systemd_units)"),
    )  # fmt: skip
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False

    def __init__(self, services: Sequence[str] = (), units: Sequence[str] = ()) -> None:
        self.services = tuple(services)
        self.units = tuple(units)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Remediation:
        return cls(values["service"], values["unit"])

    @classmethod
    def report(cls, run: RunResult, as_json: bool) -> None:
        """The table of every check, unless --json."""
        if as_json:
            return
        from remediations.reporting.output import use_colour

        table = render_table(run, colour=use_colour(sys.stdout))
        if table:
            print("\n" + table)

    def validate(self, host: Host) -> None:
        super().validate(host)
        Settings.from_host(host, self.services, self.units)

    def run(self, ctx: HostContext) -> None:
        settings = Settings.from_host(ctx.host, self.services, self.units)
        with ctx.step("facts") as step:
            result = ctx.remote.run(facts_command(settings), timeout=120)
            if not result.ok:
                raise HostError(
                    f"gathering health facts failed (exit {result.exit_code}): {result.tail()}", result
                )
            facts = parse_facts(result.stdout, settings.units)
            defined = facts.services
            unknown = [s for s in settings.services or () if defined is not None and s not in defined]
            if unknown:
                raise HostError(unknown_service(unknown, defined or ()))
            step.done(Status.OK, "gathered in one round trip")
        if settings.project is not None:  # what each service runs, for rollback (image_record)
            noted = images.observe_quietly(ctx.remote, ctx.host, settings.project.name,
                                           images.by_service(facts.containers), ctx.options.check,
                                           facts.record)  # fmt: skip
            if noted:
                ctx.record("image record", Status.OK, noted)
        s3_newest, s3_error = (None, "")
        if settings.backup_s3:
            s3_newest, s3_error = newest_s3_object(settings.backup_s3, ctx.host.vars)
        checks = evaluate(settings, facts, s3_newest, s3_error)
        for check in checks:
            ctx.record(check.name, check.status, f"{check.colour}: {check.detail}", check=check.to_dict())
        red = [c for c in checks if c.colour == RED]
        yellow = [c for c in checks if c.colour == YELLOW]
        if red:
            ctx.record(
                "health",
                Status.FAILED,
                f"{len(red)} red: " + "; ".join(f"{c.name} ({c.detail})" for c in red),
                red=[c.name for c in red],
            )
        else:
            text = (
                f"all {len(checks)} checks green"
                if not yellow
                else (
                    f"{len(checks) - len(yellow)} green, {len(yellow)} yellow: "
                    + ", ".join(c.name for c in yellow)
                )
            )
            ctx.record("health", Status.OK, text, red=[])


def render_table(run: RunResult, colour: bool = False) -> str:
    """The checks of every host as a table, for a terminal."""
    paint = {GREEN: "\033[32m", YELLOW: "\033[33m", RED: "\033[31m"}
    rows = []
    for host in run.hosts:
        for step in host.steps:
            check = step.data.get("check")
            if not isinstance(check, dict):
                continue
            value = check.get("value")
            rows.append(
                (
                    host.host,
                    str(check["name"]),
                    str(check["colour"]),
                    "-" if value is None else str(value),
                    str(check.get("threshold")),
                    " ".join(str(check.get("detail", "")).split())[:80],
                )
            )
    if not rows:
        return ""
    heads = ("host", "check", "colour", "value", "threshold", "detail")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        if colour:
            cells[2] = f"{paint.get(row[2], '')}{cells[2]}\033[0m"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
