"""What restore-pitr runs on the db host, as shell text (every value quoted), and how it reads the
answers: unpack a base backup into a new data directory and start it in recovery on a spare port,
wait until it promoted, switch the cluster's data directory (the old one kept), clean up.

The PostgreSQL tools run as the database's OS user (`as_user`, see facts.postgres); nothing here
carries a secret: the restore_command copies from the local archive directory.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from remediations.facts.pitr import iso
from remediations.facts.postgres import PgTarget, script, sql_literal

RECOVERY_LOG = "pitr-recovery.log"
SAVED_AUTO_CONF = "postgresql.auto.conf.pre-pitr"
MARK = "# remediations restore-pitr: recovery settings (removed when the data directory is switched)"
LOG_PATTERN = (
    "recovery stopping|recovery ended|FATAL|PANIC|redo done|selected new timeline|last completed transaction"
)
STOPPING_RE = re.compile(
    r"recovery stopping (before|after) (?:commit|abort) of transaction \d+, time (\S+ \S+)"
)


@dataclass(frozen=True)
class Layout:
    """Where things are on the host."""

    user: str
    pg_ctl: str
    psql: str
    data_dir: str  # the cluster's data directory
    new_dir: str  # the restore, beside it
    kept_dir: str  # the old one after the switch
    socket_dir: str
    spare_port: int


def layout(pg: PgTarget, data_dir: str, socket_dir: str, spare_port: int, now: dt.datetime) -> Layout:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    base = data_dir.rstrip("/")
    return Layout(
        pg.os_user,
        pg.tool("pg_ctl"),
        pg.tool("psql"),
        base,
        f"{base}.pitr-{stamp}",
        f"{base}.pre-pitr-{stamp}",
        socket_dir,
        spare_port,
    )


def conf_value(text: str) -> str:
    """A postgresql.conf string value."""
    return sql_literal(text)


@dataclass(frozen=True)
class S3Source:
    """The archive's copy in S3, fetched by the host itself with curl (SigV4); the credentials are
    in a curl config file on the host (`user = "KEY:SECRET"`, mode 0600), never on a command line."""

    url: str  # the prefix's URL, ending in "/"
    credentials_file: str
    region: str


def restore_command(archive_dir: str, s3: S3Source | None) -> str:
    """Copy a WAL file from the local archive; failing that, from S3 (when configured). Without an
    archive directory (a restore host), from S3 only."""
    q = shlex.quote
    local = f'cp {q(archive_dir.rstrip("/"))}/%f "%p"'
    if s3 is None:
        return local
    sign = q(f"aws:amz:{s3.region}:s3")
    fetch = (
        f"curl -fsS -K {q(s3.credentials_file)} --aws-sigv4 {sign} "
        f'--connect-timeout 5 --max-time 600 -o "%p" {q(s3.url)}%f'
    )
    return f"{local} 2>/dev/null || {fetch}" if archive_dir else fetch


def overrides(
    archive_dir: str,
    target: str,
    timeline: int,
    spare_port: int,
    drill: bool,
    s3: S3Source | None = None,
    socket_dir: str = "",
) -> str:
    """postgresql.auto.conf lines for the recovery on the spare port (read last: they win).

    Archiving: off in a drill (nothing it makes reaches the archive); before a switch, on with an
    empty archive_command, so the new timeline's history file and segments wait in pg_wal/ (.ready)
    and the cluster's own archive_command uploads them once it runs there."""
    restore = restore_command(archive_dir, s3)
    lines = [
        "",
        MARK,
        f"port = {spare_port}",
        "listen_addresses = ''",
        *([f"unix_socket_directories = {conf_value(socket_dir)}"] if socket_dir else []),
        "cluster_name = 'restore-pitr'",
        f"restore_command = {conf_value(restore)}",
        "recovery_target_action = 'promote'",
        f"recovery_target_timeline = '{timeline}'",
        *([f"recovery_target_time = {conf_value(target)}"] if target else []),
        *(["archive_mode = off"] if drill else ["archive_mode = on", "archive_command = ''"]),
        "",
    ]
    return "\n".join(lines)


def _as(lay: Layout, *argv: str) -> str:
    return f"as_user {shlex.quote(lay.user)} {shlex.join(argv)}"


as_user = _as


def restore_script(lay: Layout, tar_path: str = "", unpack: str = "") -> str:
    """Unpack the backup into the new directory (`tar -xf TAR_PATH`, or the shell text `unpack`),
    add the recovery settings (on stdin), start it."""
    new = lay.new_dir
    return script(
        "set -e",
        f"if [ -e {shlex.quote(new)} ]; then echo {shlex.quote(new + ' exists already')} >&2; exit 65; fi",
        _as(lay, "mkdir", "-p", "--", os.path.dirname(new)),
        _as(lay, "mkdir", "-m", "700", "--", new),
        unpack or _as(lay, "tar", "-xf", tar_path, "-C", new),
        _as(
            lay, "rm", "-f", "--", f"{new}/postmaster.pid", f"{new}/postmaster.opts", f"{new}/standby.signal"
        ),
        _as(lay, "mkdir", "-p", "--", f"{new}/pg_wal"),
        f"if [ -f {shlex.quote(new + '/postgresql.auto.conf')} ]; then "
        + _as(lay, "cp", "-p", "--", f"{new}/postgresql.auto.conf", f"{new}/{SAVED_AUTO_CONF}")
        + "; fi",
        _as(lay, "sh", "-c", 'cat >> "$1"', "sh", f"{new}/postgresql.auto.conf"),
        _as(lay, "touch", "--", f"{new}/recovery.signal"),
        _as(lay, lay.pg_ctl, "-D", new, "-l", f"{new}/{RECOVERY_LOG}", "-W", "start") + " >/dev/null",
    )


def wait_script(lay: Layout, timeout: float) -> str:
    """Until the restored server is out of recovery, or it died, or `timeout` seconds; then the
    recovery log's telling lines."""
    q = shlex.quote
    probe = _as(
        lay,
        lay.psql,
        "-X",
        "-At",
        "-h",
        lay.socket_dir,
        "-p",
        str(lay.spare_port),
        "-d",
        "postgres",
        "-c",
        "select pg_is_in_recovery()",
    )
    alive = _as(lay, lay.pg_ctl, "-D", lay.new_dir, "status")
    return script(
        f"deadline=$(( $(date +%s) + {int(timeout)} ))",
        "while :; do",
        f'  r=$({probe} 2>/dev/null) || r=""',
        '  if [ "$r" = f ]; then echo "@@promoted"; break; fi',
        f"  if ! {alive} >/dev/null 2>&1; then sleep 1; if ! {alive} >/dev/null 2>&1; then "
        'echo "@@died"; break; fi; fi',
        '  if [ "$(date +%s)" -ge "$deadline" ]; then echo "@@timeout"; break; fi',
        "  sleep 1",
        "done",
        f'echo "@@log"; grep -E {q(LOG_PATTERN)} {q(lay.new_dir + "/" + RECOVERY_LOG)} | tail -n 20',
    )


VERIFY_SQL = """select json_build_object(
  'in_recovery', pg_is_in_recovery(),
  'timeline', case when pg_is_in_recovery() then null
                   else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end,
  'replayed_at', extract(epoch from pg_last_xact_replay_timestamp())::float8,
  'data_directory', current_setting('data_directory'));
"""


def stopped_at(log: str) -> tuple[str, float | None]:
    """From the recovery log: ("before"|"after", the commit time recovery stopped at), or ("", None)."""
    found = STOPPING_RE.findall(log)
    if not found:
        return "", None
    how, stamp = found[-1]
    text = stamp if re.search(r"[+-]\d{2}:\d{2}$", stamp) else stamp + ":00"
    try:
        return how, dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return how, None


def judge(state: dict[str, Any], log: str, target: float | None, expected: int) -> tuple[list[str], str]:
    """Pure: is the promoted server what was asked for? (problems, the step's message).

    Out of recovery, on the expected timeline; with a target, the log says where recovery stopped,
    the last replayed commit is at or before the target and the commit it stopped before is after
    it (a recovery that replayed everything and called it done fails here)."""
    replayed = state.get("replayed_at")
    how, stopped = stopped_at(log)
    problems = []
    if state.get("in_recovery"):
        problems.append("it is still in recovery")
    if state.get("timeline") != expected:
        problems.append(f"it is on timeline {state.get('timeline')}, expected {expected}")
    if target is not None:
        if not how:
            problems.append("its log says no recovery target was reached")
        if replayed is not None and float(replayed) > target:
            problems.append(f"its last replayed commit ({iso(float(replayed))}) is after the target")
        if stopped is not None and how == "before" and stopped <= target:
            problems.append(f"it stopped before a commit at {iso(stopped)}, not after the target")
    last = iso(float(replayed)) if replayed is not None else "none replayed"
    stop = f", stopped before the commit at {iso(stopped)}" if stopped is not None else ""
    goal = iso(target) if target is not None else "the end of the archive"
    return (
        problems,
        f"promoted on timeline {state.get('timeline')}; last replayed commit {last}{stop} (target {goal})",
    )


def _stop(lay: Layout, data_dir: str, mode: str = "fast") -> str:
    return _as(lay, lay.pg_ctl, "-D", data_dir, "-m", mode, "-w", "-t", "300", "stop")


def cleanup_script(lay: Layout) -> str:
    """Stop the restored server and remove the new directory (a drill's end, or a failed restore)."""
    q = shlex.quote
    return script(
        f"if [ -d {q(lay.new_dir)} ]; then",
        f"  {_stop(lay, lay.new_dir, 'immediate')} >/dev/null 2>&1 || true",
        "  " + _as(lay, "rm", "-rf", "--", lay.new_dir),
        "fi",
    )


def switch_script(lay: Layout, start: str, stop: str) -> str:
    """Stop the restored server, drop its recovery settings, stop the cluster, rename the old data
    directory (kept) and put the new one in its place, start the cluster; if it does not start,
    put the old directory back and start that."""
    q = shlex.quote
    new, old, kept = lay.new_dir, lay.data_dir, lay.kept_dir
    return script(
        "set -e",
        f"{_stop(lay, new)} >/dev/null",
        f"if [ -f {q(new + '/' + SAVED_AUTO_CONF)} ]; then "
        + _as(lay, "mv", "-f", "--", f"{new}/{SAVED_AUTO_CONF}", f"{new}/postgresql.auto.conf")
        + "; else "
        + _as(lay, "rm", "-f", "--", f"{new}/postgresql.auto.conf")
        + "; fi",
        _as(lay, "rm", "-f", "--", f"{new}/recovery.signal", f"{new}/standby.signal"),
        f"if {_as(lay, lay.pg_ctl, '-D', old, 'status')} >/dev/null 2>&1; then {stop}; fi",
        _as(lay, "mv", "--", old, kept),
        _as(lay, "mv", "--", new, old),
        'echo "@@moved"',
        f"if ! {start}; then",
        '  echo "@@rollback"',
        f"  {_stop(lay, old, 'immediate')} >/dev/null 2>&1 || true",
        "  " + _as(lay, "mv", "--", old, new + ".failed"),
        "  " + _as(lay, "mv", "--", kept, old),
        f"  {start} || true",
        "  exit 70",
        "fi",
        'echo "@@switched"',
    )


def default_start(lay: Layout, log_file: str) -> str:
    return (
        _as(lay, lay.pg_ctl, "-D", lay.data_dir, "-l", log_file, "-w", "-t", "300", "start") + " >/dev/null"
    )


def default_stop(lay: Layout) -> str:
    return _stop(lay, lay.data_dir) + " >/dev/null"


def probe_command(lay: Layout, data_parent: str) -> str:
    """Free bytes where the new directory goes, and whether the spare port's socket is taken."""
    q = shlex.quote
    sock = f"{lay.socket_dir.rstrip('/')}/.s.PGSQL.{lay.spare_port}"
    return f"df -P -B1 -- {q(data_parent)} | tail -1; if [ -e {q(sock)} ]; then echo '@@taken'; fi"


def parse_probe(output: str) -> tuple[int | None, bool]:
    lines: Sequence[str] = output.strip().splitlines()
    fields = lines[0].split() if lines else []
    free = int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None
    return free, any(line.strip() == "@@taken" for line in lines)
