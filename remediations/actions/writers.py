"""The writers of a database: the compose services on the app hosts that write to it, stopped while
the database is put back and started again after (restore-db; restore-pitr can use the same).

Which they are is inventory data on the database host: `restore_db_writers` maps host patterns to
the compose services on those hosts (`{api: [django-api, celery-worker]}`); `--stop HOST:SERVICE`
adds one. A writer is named `HOST:SERVICE` in results and in the records that remember which
ones a run stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from remediations.actions.compose_service import ServiceSettings, recover
from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.results import Status
from remediations.facts.compose import compose_run

WRITERS_VAR = "restore_db_writers"


@dataclass(frozen=True)
class Writer:
    host: str
    service: str

    @property
    def label(self) -> str:
        return f"{self.host}:{self.service}"

    @classmethod
    def parse(cls, text: str, flag: str = "--stop") -> Writer:
        host, sep, service = str(text).partition(":")
        if not sep or not host or not service:
            raise UsageError(f"{flag} {validate.shown(text)}: give HOST:SERVICE (e.g. api1:django-api)")
        return cls(host, validate.check_service(service, flag))


@dataclass(frozen=True)
class WriterFacts:
    writer: Writer
    running: bool
    why: str  # its state, in words


def resolve(inventory: Inventory, host: Host, stop: Sequence[Writer]) -> list[tuple[Host, list[str]]]:
    """The app hosts and their writer services: `restore_db_writers` of the database host and every
    --stop; each host once, in inventory order, each with the vars a compose service needs."""
    where = f"{host.source}: host {host.name}: {WRITERS_VAR}"
    declared = host.get(WRITERS_VAR) or {}
    if not isinstance(declared, Mapping):
        raise UsageError(f"{where} must map host patterns to lists of services (e.g. {{api: [django-api]}})")
    wanted: dict[str, list[str]] = {}
    for pattern, services in declared.items():
        names = [services] if isinstance(services, str) else services
        if not isinstance(names, list) or not names:
            raise UsageError(f"{where}: {pattern}: give a list of compose services")
        for target in inventory.select(str(pattern), WRITERS_VAR):
            for service in names:
                checked = validate.check_service(service, f"{WRITERS_VAR}: {pattern}")
                wanted.setdefault(target.name, [])
                if checked not in wanted[target.name]:
                    wanted[target.name].append(checked)
    for writer in stop:
        if writer.host not in inventory.hosts:
            raise UsageError(f"--stop {writer.label}: no host {writer.host} in {inventory.source}")
        wanted.setdefault(writer.host, [])
        if writer.service not in wanted[writer.host]:
            wanted[writer.host].append(writer.service)
    resolved = []
    for name, target in inventory.hosts.items():
        if name in wanted:
            validate.check_vars(target)
            target.require("compose_project_dir")
            ServiceSettings.of(target)  # its compose vars are bad input now, not mid-restore
            resolved.append((target, wanted[name]))
    return resolved


def gather(subs: Mapping[str, HostContext], resolved: Sequence[tuple[Host, list[str]]]) -> list[WriterFacts]:
    """Whether each writer runs: one round trip per app host, a step each."""
    found = []
    for target, services in resolved:
        sub = subs[target.name]
        with sub.step(f"facts {target.name}") as step:
            project = ServiceSettings.of(target).gather(sub.remote, known=services)
            words = []
            for service in services:
                facts = project.facts[service]
                running = any(c.state == "running" for c in facts.containers)
                found.append(WriterFacts(Writer(target.name, service), running, facts.verdict()[1]))
                words.append(f"{service} {'running' if running else 'not running'}")
            step.done(Status.OK, f"writers: {', '.join(words)}")
    return found


def stop(sub: HostContext, writer: Writer) -> None:
    """`compose stop -t stop_timeout SERVICE` on the writer's host, a step of its own."""
    settings = ServiceSettings.of(sub.host)
    with sub.step(f"stop {writer.label}") as step:
        variant = settings.gather(sub.remote, known=[writer.service]).variant
        compose_run(
            sub.remote,
            settings.project,
            variant,
            f"compose stop {writer.service}",
            "stop",
            "-t",
            str(settings.stop_timeout),
            writer.service,
            timeout=settings.stop_timeout + 120,
        )
        step.done(Status.CHANGED, f"stopped {writer.label}")


def start(ctx: HostContext, subs: Mapping[str, HostContext], labels: Sequence[str]) -> list[str]:
    """Start the writers `labels` (`up -d --no-deps`) and wait until healthy, as restart-api waits;
    one already running is left alone. Returns the ones that are not healthy at the end."""
    failed = []
    for label in labels:
        writer = Writer.parse(label)
        sub = subs.get(writer.host)
        if sub is None:
            ctx.record(
                f"start {label}",
                Status.FAILED,
                f"{writer.host} is not open in this run; start {writer.service} there by hand",
            )
            failed.append(label)
            continue
        settings = ServiceSettings.of(sub.host, [writer.service])
        reread = settings.facts_of(sub.remote, writer.service)
        current = reread()
        if current.containers and all(c.state == "running" for c in current.containers):
            sub.record(
                f"{writer.host} start", Status.OK, f"{writer.service} is running ({current.verdict()[1]})"
            )
            continue
        healthy = recover(
            sub,
            settings.project,
            writer.service,
            current,
            "start",
            reread,
            settings.timeout,
            settings.stop_timeout,
            step_prefix=f"{writer.host} ",
        )
        if not healthy:
            failed.append(label)
    return failed
