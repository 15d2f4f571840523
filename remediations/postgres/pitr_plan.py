"""restore-pitr's preflight: from the facts, the base backup, the WAL and where the restore goes, or
the refusal (nothing changed). Read-only: it lists S3 and probes the hosts, it changes nothing.

Where the restore can read from decides what counts: on the db host itself, the local archive and
base backups and (with pitr_s3_credentials_file) their S3 copies; `--onto` a restore host, S3 only
(that host has neither the archive directory nor the backup folders), so only the base backups
base-backup uploaded, the segments in wal_s3_prefix and the history files there.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from typing import Any

from remediations.actions import pitr_host as hostside
from remediations.actions import pitr_s3host
from remediations.core.context import HostContext
from remediations.facts import pitr
from remediations.facts.postgres import PgTarget, human_bytes, script
from remediations.postgres import pitr_s3
from remediations.postgres.pitr_settings import Onto, Settings, refuse

VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)")


@dataclass
class Restore:
    """What gather decided on, and what the run made as it went."""

    conf: Settings
    pg: PgTarget  # the restore's host's tools (the db host, or the --onto host)
    lay: hostside.Layout
    backup: pitr.BaseBackup
    wal: pitr.WalRange
    target: float | None
    timeline: int  # recovery_target_timeline
    expected: int  # the timeline the promotion makes
    onto: Onto | None = None
    report: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    made: bool = False  # the new directory exists

    @property
    def target_text(self) -> str:
        return pitr.iso(self.target) if self.target is not None else "the end of the archive"

    @property
    def where(self) -> str:
        return f" on {self.onto.host.name}" if self.onto else ""


def check_server(conf: Settings, pg: PgTarget, facts: pitr.PitrFacts) -> str:
    """The cluster's data directory; refusals for a server restore-pitr cannot restore."""
    server = facts.server
    if facts.archive_missing:
        raise refuse(f"the WAL archive {conf.archive_dir} does not exist on the host")
    if server.error:
        raise refuse(
            f"PostgreSQL on port {pg.port} does not answer ({server.error}): restore-pitr needs the "
            "cluster's settings from it"
        )
    if server.in_recovery:
        raise refuse(f"the server on port {pg.port} is in recovery (a standby): restore its primary")
    data_dir = server.data_directory.rstrip("/")
    if not server.config_file.startswith(data_dir + "/"):
        raise refuse(
            f"config_file {server.config_file} is outside the data directory {data_dir}: "
            "restore-pitr restores clusters whose configuration lives in their data directory"
        )
    return data_dir


@dataclass(frozen=True)
class Sources:
    """What the restore_command and the unpack can reach."""

    segments: dict[str, pitr.Segment]
    timelines: dict[int, str]
    backups: list[pitr.BaseBackup]


def sources(ctx: HostContext, conf: Settings, facts: pitr.PitrFacts, onto: Onto | None) -> Sources:
    """The segments, timeline history files and base backups the restore can use: the local
    archive's and, when configured, S3's (a history file S3 holds must be the local archive's
    too, else the run refuses); --onto: S3's only."""
    if conf.s3 is None:
        if onto:
            raise refuse("--onto needs the archive's S3 copy: set pitr_s3_credentials_file on the db host")
        return Sources(facts.segments, facts.timelines, pitr.match_backups(facts.folders, facts.histories))
    pitr_s3.check_credentials(
        conf.s3.credentials_file, facts.credentials, PgTarget.from_host(ctx.host).os_user
    )
    s3 = pitr_s3.read_archive(ctx, conf)
    in_s3 = pitr_s3.read_backups(ctx, conf.base_s3) if conf.base_s3 else []
    if onto:
        candidates = in_s3
        segments, timelines = s3.segments, s3.timelines
    else:
        problem = pitr.disagreement(facts.timelines, s3.timelines, conf.archive_dir, s3.where)
        if problem:
            raise refuse(problem)
        local = {f.start_lsn for f in facts.folders}
        candidates = [*facts.folders, *(b for b in in_s3 if b.start_lsn not in local)]
        segments, timelines = {**s3.segments, **facts.segments}, facts.timelines
    known = {h.start_lsn for h in facts.histories}
    wanted = [b for b in candidates if b.in_s3 and b.start_lsn not in known]
    histories = [*facts.histories, *pitr_s3.histories_for(ctx, conf, s3, wanted)]
    return Sources(segments, timelines, pitr.match_backups(candidates, histories))


def no_backup(conf: Settings, onto: Onto | None) -> str:
    s3 = f"s3://{conf.base_s3.bucket}/{conf.base_s3.prefix}" if conf.base_s3 else ""
    if onto:
        if not s3:
            return "--onto needs base backups in S3: set backup_s3_bucket (and run inv base-backup)"
        return f"no base backup in {s3} (the restore host cannot read {conf.base_dir}): run inv base-backup"
    where = f"under {conf.base_dir}" + (f" or in {s3}" if s3 else "")
    return f"no base backup {where} (make one: inv base-backup)"


def choose(
    ctx: HostContext,
    conf: Settings,
    facts: pitr.PitrFacts,
    to: float | None,
    onto: Onto | None = None,
    sub: HostContext | None = None,
) -> Restore:
    """The backup, the WAL and the directories; a HostError (nothing changed) for what refuses."""
    pg = PgTarget.from_host(ctx.host)
    data_dir = check_server(conf, pg, facts)
    found = sources(ctx, conf, facts, onto)
    timeline = facts.server.timeline or max([1, *found.timelines])
    path = pitr.timeline_path(timeline, found.timelines)
    if isinstance(path, str):
        raise refuse(path + (" (its S3 copy: --onto reads S3 only)" if onto else ""))
    if not found.backups:
        raise refuse(no_backup(conf, onto))
    choice = pitr.choose_backup(found.backups, to)
    if choice.backup is None or choice.backup.history is None:
        raise refuse(choice.refused)
    backup, history = choice.backup, choice.backup.history
    if history.timeline not in [s.timeline for s in path]:
        raise refuse(
            f"base backup {backup.label} is on timeline {history.timeline}, not in the history "
            f"of timeline {timeline}"
        )
    wal = pitr.wal_range(history.start_lsn, path, found.segments, to)
    if wal.refused:
        raise refuse(wal.refused + (" (in S3: --onto reads S3 only)" if onto else ""))
    if to is not None and to > time.time() + 60:
        raise refuse(f"the target {pitr.iso(to)} is in the future")
    now = dt.datetime.now(dt.UTC)
    needed = max(facts.server.bytes, float(backup.size)) * 1.1
    if onto is not None and sub is not None:
        lay = onto_layout(sub, onto, ctx.host.name, facts.server.version, needed, now)
        where_pg = onto.pg
    else:
        lay = local_layout(ctx, conf, pg, data_dir, facts.server.socket_dir, needed, now)
        where_pg = pg
    expected = pitr.expected_timeline(timeline, found.timelines)
    return Restore(conf, where_pg, lay, backup, wal, to, timeline, expected, onto)


def local_layout(
    ctx: HostContext, conf: Settings, pg: PgTarget, data_dir: str, socket_dir: str, needed: float, now: Any
) -> hostside.Layout:
    lay = hostside.layout(pg, data_dir, socket_dir, conf.spare_port, now)
    probe = ctx.remote.run(hostside.probe_command(lay, os.path.dirname(data_dir)), timeout=60)
    free, taken = hostside.parse_probe(probe.stdout)
    if taken:
        raise refuse(
            f"pitr_spare_port {conf.spare_port} is taken (a socket in {lay.socket_dir}): set another"
        )
    if free is not None and free < needed:
        raise refuse(
            f"{human_bytes(free)} free beside {data_dir}, the restore needs about {human_bytes(needed)}"
        )
    return lay


def onto_probe(onto: Onto) -> str:
    """On the restore host: its credentials file, pg_ctl's version, curl, the free bytes where the
    restore goes (the nearest folder that exists)."""
    q = shlex.quote
    return script(
        pitr_s3.stat_command(onto.credentials_file),
        f'echo "@@version $({q(onto.pg.tool("pg_ctl"))} --version 2>/dev/null)"',
        'if command -v curl >/dev/null 2>&1; then echo "@@curl"; fi',
        f'd={q(onto.restore_dir)}; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done',
        'echo "@@free $(df -P -B1 -- "$d" | tail -1 | awk \'{print $4}\')"',
    )


def onto_layout(
    sub: HostContext, onto: Onto, source: str, server_version: int, needed: float, now: Any
) -> hostside.Layout:
    """The restore on the --onto host: `pitr_restore_dir/SOURCE.pitr-STAMP`, its socket in itself
    (no other server's port or socket can be in the way there)."""
    name = sub.host.name
    result = sub.remote.run(onto_probe(onto), timeout=60)
    lines = {line.split(" ", 1)[0]: line.partition(" ")[2].strip() for line in result.stdout.splitlines()}
    if "@@credentials" not in lines:
        raise refuse(f"probing {name} failed (exit {result.exit_code}): {result.tail(2)}")
    pitr_s3.check_credentials(onto.credentials_file, lines["@@credentials"], onto.pg.os_user, name)
    if "@@curl" not in lines:
        raise refuse(f"{name} has no curl: the restore host fetches the backup and the WAL with it")
    major = VERSION_RE.search(lines.get("@@version", ""))
    if major is None:
        raise refuse(f"{name} has no pg_ctl at {onto.pg.tool('pg_ctl')} (set postgres_bin_dir)")
    if int(major.group(1)) != server_version // 10000:
        raise refuse(
            f"{name} has PostgreSQL {major.group(1)}, the cluster is {server_version // 10000}: "
            "a base backup restores only into the same major version"
        )
    free = lines.get("@@free", "")
    if free.isdigit() and int(free) < needed:
        raise refuse(
            f"{human_bytes(int(free))} free on {name} for {onto.restore_dir}, the restore needs "
            f"about {human_bytes(needed)}"
        )
    lay = hostside.layout(onto.pg, f"{onto.restore_dir}/{source}", "", onto.spare_port, now)
    return replace(lay, socket_dir=lay.new_dir)


def unpack(facts: Restore) -> str:
    """Shell text that fills the new directory: the local tar, or the S3 parts fetched by the
    restore's host (with its own credentials file)."""
    lay, backup, conf = facts.lay, facts.backup, facts.conf
    if not backup.in_s3:
        tar = f"{conf.base_dir}/{backup.folder}/{backup.tar}"
        return hostside.as_user(lay, "tar", "-xf", tar, "-C", lay.new_dir)
    assert conf.base_s3 is not None
    source = facts.onto.credentials_file if facts.onto else conf.base_s3.source.credentials_file
    fetch = replace(conf.base_s3.source, credentials_file=source)
    gz = backup.tar.endswith(".gz")
    return pitr_s3host.fetch_command(lay.user, fetch, backup.folder, backup.parts, lay.new_dir, gz)


def overrides(facts: Restore, drill: bool) -> str:
    """The recovery settings; --onto: WAL from S3 only (with the restore host's credentials
    file), and the socket in the restore's own directory."""
    target = pitr.iso(facts.target) if facts.target is not None else ""
    conf, lay = facts.conf, facts.lay
    if facts.onto is None or conf.s3 is None:
        return hostside.overrides(conf.archive_dir, target, facts.timeline, lay.spare_port, drill, conf.s3)
    s3 = replace(conf.s3, credentials_file=facts.onto.credentials_file)
    return hostside.overrides("", target, facts.timeline, lay.spare_port, True, s3, lay.socket_dir)


def describe(plan: Restore) -> str:
    history = plan.backup.history
    ended = pitr.iso(history.ended) if history else "?"
    return (
        f"base backup {plan.backup.label} ({plan.backup.tar}, {human_bytes(plan.backup.size)}, ended "
        f"{ended}); WAL {plan.wal.first} … {plan.wal.last} ({plan.wal.count} segment(s), all archived; "
        f"archive ends at {plan.wal.archive_end}); target {plan.target_text} on timeline "
        f"{plan.timeline}, the restore makes timeline {plan.expected}{plan.where}"
    )
