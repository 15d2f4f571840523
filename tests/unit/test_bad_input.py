"""Every bad argument and inventory value through the real front end (`python -m invoke …`): exit 2,
one line on stderr naming what was wrong, no traceback, and nothing run (no host locked, only the
`arguments` record audited). The targets are local hosts: a bad input that got through would run for
real here, in tmp_path.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

import tasks
from tests import labkit

BIG = "x" * 100_000
HOSTILE = {
    "newline": "api\nrm -rf /",
    "subshell": "$(touch /tmp/rm-pwned)",
    "semicolon": "api; reboot",
    "backticks": "api`id`",
    "100kB": BIG,
}
# S3 tasks meet their bad input before any request: the endpoint is a closed port on loopback, so a
# bad input that got through would show up as "cannot reach", not as the check under test.
AWS = {"AWS_ACCESS_KEY_ID": "AKIDTESTVALIDATE", "AWS_SECRET_ACCESS_KEY": "test-validate-secret-key",
       "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def case(id: str, *args: str, stdin: str | None = None, vars: dict[str, Any] | None = None,
         want: tuple[str, ...] = ()) -> Any:  # fmt: skip
    return pytest.param(list(args), stdin, vars or {}, want, id=id)


def service_cases(task: str, *extra: str, only: tuple[str, ...] = tuple(HOSTILE)) -> list[Any]:
    return [case(f"{task}-service-{name}", task, "--host", "local1", "--service", HOSTILE[name], *extra,
                 want=("--service", "not a compose service name"))
            for name in only]  # fmt: skip


def unit_cases(task: str, *extra: str) -> list[Any]:
    return [case(f"{task}-unit-{name}", task, "--host", "local1", "--unit", HOSTILE[name], *extra,
                 want=("--unit", "not a systemd service name")) for name in HOSTILE]  # fmt: skip


L1 = ("--host", "local1")
DB = ("rotate-db-password", *L1, "--env-host", "local1")
SET_ENV = ("set-env", *L1, "--service", "api")
S3_OBJECT = ("restore-s3-object", "--bucket", "shop-assets", "--key", "k", "--undelete")
S3_PREFIX = ("restore-s3-prefix", "--bucket", "shop-assets", "--prefix", "p/")

CASES = [
    # the common flags (a traceback from Invoke's own int() before)
    case("parallel-abc", "restart-api", *L1, "--parallel", "abc", want=("--parallel 'abc'",)),
    case("parallel-100kB", "restart-api", *L1, "--parallel", "9" * 100_000, want=("--parallel",)),
    case("serial-abc", "restart-api", *L1, "--serial", "abc", want=("--serial 'abc'",)),
    case("lock-wait-abc", "restart-api", *L1, "--lock-wait", "abc", want=("--lock-wait 'abc'",)),
    case("lock-wait-nan", "restart-api", *L1, "--lock-wait", "nan", want=("--lock-wait 'nan'",)),
    case("lock-wait-negative", "restart-api", *L1, "--lock-wait", "-1", want=("--lock-wait",)),
    # compose service names, in every task that takes one
    *service_cases("restart-api"),
    *service_cases("set-env", "--set", "A=1"),
    *service_cases("ensure-healthy", only=("newline", "100kB")),
    *service_cases("rollback", only=("newline", "semicolon")),
    case("rollback-to-subshell", "rollback", *L1, "--service", "api", "--to", HOSTILE["subshell"],
         want=("--to '$(touch /tmp/rm-pwned)': not an image name or id",)),
    case("rollback-to-100kB", "rollback", *L1, "--service", "api", "--to", BIG, want=("--to 'xxx",)),
    *service_cases("deploy", only=("newline", "semicolon")),
    case("deploy-image-subshell", "deploy", *L1, "--image", HOSTILE["subshell"], want=("--image '$(touch",)),
    case("deploy-image-dotdot", "deploy", *L1, "--image", "local/../api:1", want=("not an image name",)),
    case("deploy-image-100kB", "deploy", *L1, "--image", BIG, want=("--image 'xxx",)),
    case("rollback-list-and-to", "rollback", *L1, "--service", "api", "--list", "--to", "local/api:1",
         want=("--list and --to",)),
    *service_cases("rotate-secret", "--name", "API_TOKEN", only=("subshell", "100kB")),
    case("restart-api-service-empty", "restart-api", *L1, "--service", "", want=("--service ''",)),
    # logs, run-in-service, migrate (the words after `--`: tests/unit/docker/test_service_ops.py)
    *service_cases("logs"),
    *service_cases("migrate", only=("newline", "subshell")),
    *service_cases("run-in-service", only=("semicolon", "100kB")),
    case("logs-grep-newline", "logs", *L1, "--grep", "error\nrm -rf /", want=("--grep 'error\\nrm -rf /'",
         "no control characters")),
    case("logs-grep-nul", "logs", *L1, "--grep", "a\x01b", want=("--grep 'a\\x01b'",)),
    case("logs-grep-100kB", "logs", *L1, "--grep", BIG, want=("--grep 'xxx", "1 to 500 characters")),
    case("logs-grep-empty", "logs", *L1, "--grep", "", want=("--grep ''",)),
    case("logs-regex-unclosed", "logs", *L1, "--grep", "(error", "--regex",
         want=("--grep '(error': not a regular expression",)),
    case("logs-regex-alone", "logs", *L1, "--regex", want=("--regex says how to read --grep",)),
    case("logs-unit-hostile", "logs", *L1, "--unit", "x; reboot",
         want=("--unit 'x; reboot': not a systemd unit",)),
    case("logs-unit-option", "logs", *L1, "--unit", "-fx", want=("--unit '-fx'",)),
    case("logs-since-zero", "logs", *L1, "--since", "0",
         want=("--since '0': give a duration longer than 0s",)),
    case("logs-since-word", "logs", *L1, "--since", "yesterday", want=("--since 'yesterday'",)),
    case("logs-tail-zero", "logs", *L1, "--tail", "0",
         want=("--tail '0': give a whole number from 1 to 5000",)),
    case("logs-tail-huge", "logs", *L1, "--tail", "1000000", want=("--tail",)),
    case("migrate-via-typo", "migrate", *L1, "--via", "ssh", want=("--via 'ssh': give auto, exec or run",)),
    case("migrate-timeout-zero", "migrate", *L1, "--timeout", "0", want=("--timeout '0'",)),
    case("service-checks-not-a-mapping", "migrate", *L1, vars={"service_checks": "alembic current"},
         want=("service_checks: 'alembic current' is not a mapping",)),
    case("service-checks-no-verify", "migrate", *L1, vars={"service_checks": {"m": {"expect_same_as": "x"}}},
         want=("service_checks:",)),
    # PostgreSQL roles: refused before connecting (after, before)
    case("role-sql", *DB, "--role", "x; drop table users", want=("--role 'x; drop table users'",)),
    case("role-newline", *DB, "--role", "shop\napp", want=("--role 'shop\\napp'",)),
    case("role-100kB", *DB, "--role", BIG, want=("--role 'xxx",)),
    case("role-postgres", *DB, "--role", "postgres", want=("--role postgres: a superuser or reserved role",)),
    case("role-pg-reserved", *DB, "--role", "pg_monitor", want=("superuser or reserved",)),
    case("role-admin-var", *DB, "--role", "dba", vars={"postgres_admin_user": "dba"},
         want=("host local1: --role dba is postgres_admin_user, the role this task connects as",)),
    case("db-service-hostile", *DB, "--role", "shop_app", "--service", "api;x", want=("--service 'api;x'",)),
    # S3: bucket names, worker counts, times (a botocore dump or a traceback before)
    case("bucket-bad-chars", "restore-s3-object", "--bucket", "bad bucket!", "--key", "k", "--undelete",
         want=("--bucket 'bad bucket!': not an S3 bucket name",)),
    case("bucket-upper", "restore-s3-object", "--bucket", "Shop_Assets", "--key", "k", "--undelete",
         want=("not an S3 bucket name",)),
    case("bucket-semicolon", "s3-bucket-check", "--bucket", "a;b", want=("--bucket 'a;b'",)),
    case("bucket-100kB", "s3-bucket-check", "--bucket", BIG, want=("not an S3 bucket name",)),
    case("to-bucket-bad", *S3_PREFIX, "--at", "1h ago", "--to-bucket", "x/y", want=("--to-bucket 'x/y'",)),
    case("workers-huge", *S3_OBJECT, "--workers", "100000",
         want=("--workers '100000': give a whole number from 1 to 64",)),
    case("workers-zero", *S3_OBJECT, "--workers", "0", want=("--workers '0'",)),
    case("workers-abc", *S3_PREFIX, "--at", "1h ago", "--workers", "abc", want=("--workers 'abc'",)),
    case("restore-days-abc", *S3_OBJECT, "--restore-days", "abc", want=("--restore-days 'abc'",)),
    case("retention-days-abc", "s3-bucket-check", "--bucket", "shop-assets", "--retention-days", "abc",
         want=("--retention-days 'abc'",)),
    case("at-overflow", *S3_PREFIX, "--at", "100000000000000000000s ago", want=("--at", "too long")),
    case("at-400-digits", *S3_PREFIX, "--at", "9" * 400 + "s ago", want=("--at", "too long")),
    case("at-100kB", *S3_PREFIX, "--at", BIG, want=("--at", "give an ISO 8601 time")),
    # durations
    case("max-age-overflow", "rotate-secret", *L1, "--name", "API_TOKEN", "--max-age",
         "9" * 400 + "d", want=("--max-age", "too long")),
    case("older-than-overflow", "prune", *L1, "--older-than", "100000000000000000000d",
         want=("--older-than", "too long")),
    case("journal-days-abc", "disk-cleanup", *L1, "--journal-days", "abc",
         want=("--journal-days 'abc'",)),
    # set-env values on stdin: never echoed
    case("stdin-nul", *SET_ENV, "--values-from-stdin", stdin="API_TOKEN=abc\0def\n",
         want=("--values-from-stdin line 1: API_TOKEN: a value cannot hold a NUL",)),
    case("stdin-empty", *SET_ENV, "--values-from-stdin", stdin="",
         want=("holds no NAME=VALUE line",)),
    case("stdin-bare-value", *SET_ENV, "--values-from-stdin",
         stdin="hunter2-bare\n", want=("--values-from-stdin line 1: not NAME=VALUE",)),
    case("stdin-and-set", *SET_ENV, "--set", "API_TOKEN=a", "--values-from-stdin", stdin="API_TOKEN=b\n",
         want=("API_TOKEN is given both by --set and on stdin",)),
    # inventory values: the file, the host and the var
    case("health-timeout-negative", "restart-api", *L1, vars={"health_timeout": -5},
         want=("host local1: health_timeout: -5 is not a number of seconds > 0",)),
    case("health-timeout-abc", "restart-api", *L1, vars={"health_timeout": "abc"},
         want=("host local1: health_timeout: 'abc' is not",)),
    case("health-timeout-list", *SET_ENV, "--set", "A=1",
         vars={"health_timeout": [60]}, want=("health_timeout: [60] is not",)),
    case("stop-timeout-fraction", "ensure-healthy", *L1, vars={"stop_timeout": 2.5},
         want=("stop_timeout: 2.5 is not a whole number of seconds",)),
    case("ansible-port-abc", "restart-api", "--host", "remote1",
         want=("host remote1: ansible_port: 'abc' is not a port number",)),
    case("api-service-hostile", "restart-api", *L1, vars={"api_service": "api; reboot"},
         want=("api_service: 'api; reboot' is not a compose service name",)),
    case("env-backups-keep-zero", *SET_ENV, "--set", "A=1",
         vars={"env_backups_keep": 0}, want=("env_backups_keep: 0 is not a whole number from 1 to 1000",)),
    case("secret-vars-string", *SET_ENV, "--set", "A=1",
         vars={"secret_vars": "LICENSE_BLOB"}, want=("secret_vars: 'LICENSE_BLOB' is not a list",)),
    case("become-maybe", "restart-api", *L1, vars={"ansible_become": "maybe"},
         want=("ansible_become: 'maybe' is not true or false",)),
    case("notify-on-typo", "restart-api", *L1, vars={"notify_on": "sometimes"},
         want=("notify_on: 'sometimes' is not one of changes, failures, always, never",)),
    case("postgres-port-abc", *DB, "--role", "shop_app", vars={"postgres_port": "abc"},
         want=("postgres_port: 'abc' is not a port number",)),
    case("health-urls-not-a-mapping", "ensure-healthy", *L1, vars={"health_urls": "http://127.0.0.1/"},
         want=("health_urls: 'http://127.0.0.1/' is not a mapping",)),
    case("health-urls-hostile-service", "restart-api", *L1, vars={"health_urls": {"worker;reboot": "http://x/"}},
         want=("health_urls:",)),
    case("health-urls-hostile-url", "health", *L1, vars={"health_urls": {"worker": "http://x/\n; reboot"}},
         want=("health_urls:",)),
    # metrics probes (health): the rules and the URL are checked before any host is touched
    case("health-metrics-hostile-rule", "health", *L1, vars={"health_services": [], "health_probes": [
         {"name": "q", "metrics": "http://127.0.0.1:9/metrics", "red": "q > 1\n; reboot"}]},
         want=("health_probes metrics 'q': rule 'q > 1\\n; reboot'",)),
    case("health-metrics-subshell-series", "health", *L1, vars={"health_services": [], "health_probes": [
         {"name": "q", "metrics": "http://127.0.0.1:9/metrics", "red": "$(touch /tmp/pwned) > 1"}]},
         want=("expected a metric name",)),
    case("health-metrics-threshold-abc", "health", *L1, vars={"health_services": [], "health_probes": [
         {"name": "q", "metrics": "http://127.0.0.1:9/metrics", "yellow": "q > abc"}]},
         want=("'abc' is not a number",)),
    case("health-metrics-hostile-url", "health", *L1, vars={"health_services": [], "health_probes": [
         {"name": "q", "metrics": "http://x/\n; reboot", "red": "q > 1"}]}, want=("on one line",)),
    case("health-metrics-100kB-rule", "health", *L1, vars={"health_services": [], "health_probes": [
         {"name": "q", "metrics": "http://127.0.0.1:9/metrics", "red": BIG}]}, want=("give one line",)),
    case("env-files-hostile-path", *SET_ENV, "--set", "A=1",
         vars={"env_files": {"api": ".env\n; reboot"}}, want=("env_files:",)),
    # systemd services: --unit and the systemd_units var
    *unit_cases("restart-service"),
    case("restart-service-unit-socket", "restart-service", *L1, "--unit", "ssh.socket",
         want=("--unit 'ssh.socket': not a systemd service name",)),
    case("restart-service-unit-template", "restart-service", *L1, "--unit", "getty@.service",
         want=("--unit 'getty@.service'",)),
    case("restart-service-unit-option", "restart-service", *L1, "--unit", "--force",
         want=("--unit '--force'",)),
    case("restart-service-no-unit", "restart-service", *L1, want=("--unit is required",)),
    case("systemd-units-hostile-name", "restart-service", *L1, "--unit", "shop",
         vars={"systemd_units": {"shop;reboot": {}}}, want=("systemd_units:",)),
    case("systemd-units-bad-url", "restart-service", *L1, "--unit", "shop",
         vars={"systemd_units": {"shop": {"health_url": "file:///etc/shadow"}}}, want=("systemd_units:",)),
    case("systemd-units-bad-escalation", "restart-service", *L1, "--unit", "shop",
         vars={"systemd_units": {"shop": {"escalate": ["restart", "reboot"]}}}, want=("systemd_units:",)),
    case("systemd-units-unknown-key", "restart-service", *L1, "--unit", "shop",
         vars={"systemd_units": {"shop": {"helth_url": "http://127.0.0.1/"}}}, want=("systemd_units:",)),
    case("systemd-units-not-a-mapping", "restart-service", *L1, "--unit", "shop",
         vars={"systemd_units": "shop"}, want=("systemd_units: 'shop' is not a mapping",)),
    case("var-100kB", "restart-api", *L1, vars={"compose_project_name": BIG},
         want=("compose_project_name: 'xxx",)),
    case("var-nul", "restart-api", *L1, vars={"compose_project_dir": "/srv/\0shop"},
         want=("compose_project_dir: '/srv/\\x00shop' is not a path",)),
]


def inventory_file(tmp_path: Path, host_vars: dict[str, Any]) -> Path:
    data = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "lock_dir": str(tmp_path / "lock"),
                "state_dir": str(tmp_path / "state"),
                "compose_project_dir": str(tmp_path / "project"),
                "compose_project_name": "shop",
                "api_service": "api",
                "wal_archive_dir": str(tmp_path / "wal"),
                "backup_s3_bucket": "shop-backups",
            },
            "hosts": {
                "local1": host_vars,
                "remote1": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": "abc"},
            },
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("args", "stdin", "host_vars", "want"), CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_runs(
    tmp_path: Path, audit: Path, args: list[str], stdin: str | None, host_vars: dict[str, Any],
    want: tuple[str, ...],
) -> None:  # fmt: skip
    inventory = inventory_file(tmp_path, host_vars)
    ran = labkit.inv(*args, audit=audit, inventory=inventory, env=AWS, stdin="" if stdin is None else stdin,
                     timeout=60)  # fmt: skip
    assert ran.code == 2, (ran.code, ran.stdout[-2000:], ran.stderr[-2000:])
    assert "Traceback" not in ran.stderr and ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr[-2000:]
    line = lines[0]
    assert line.startswith("error: ") and len(line) < 400, line[:500]
    for fragment in want:
        assert fragment in line, line
    if host_vars or "remote1" in args:
        assert f"{inventory}: host " in line  # an inventory value: the file and the host are named
    assert "hunter2" not in line and "abc\\x00def" not in line  # values from stdin are never echoed
    assert [r["step"] for r in labkit.audit_lines(audit)] == ["arguments"]
    assert not (tmp_path / "lock").exists(), "a host was locked: the bad input reached the run"
    assert not (tmp_path / "state").exists()


def test_no_task_gives_invoke_a_numeric_default() -> None:
    """Invoke parses a flag whose default is a number with int()/float() itself, and answers bad text
    with a traceback: every number is taken as text and checked by us instead."""
    numeric = []
    for name, task in tasks.ns.tasks.items():
        for param in inspect.signature(task.body).parameters.values():
            default = param.default
            if isinstance(default, int | float) and not isinstance(default, bool):
                numeric.append(f"{name} --{param.name.replace('_', '-')}={default!r}")
    assert numeric == []
