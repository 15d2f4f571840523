"""logs: the recent log lines of a compose service's containers (and/or a systemd unit's journal) on
each host, filtered and cut on the host, each line shown behind its host and service.

facts   one round trip per host (facts.logs): the service's containers (compose's configuration and
        labels, `docker inspect`), then `docker logs [--since]` of each through grep and a ring
        buffer that keeps the last --tail lines; with --unit, `journalctl -u UNIT` the same way;
report  the lines, `HOST SERVICE | line`, each host's in turn; a cut is said where it happened.

Read-only: no host lock (reading a log must not wait behind the restart it is meant to explain).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from remediations.actions.service_env import learn_env_secrets, shown_output
from remediations.core import validate
from remediations.core.args import SERVICE, Arg, args, count
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host
from remediations.core.remediation import Remediation
from remediations.core.results import HostResult, Status
from remediations.core.validate import shown
from remediations.facts.compose import Project
from remediations.facts.logs import DEFAULT_TAIL, MAX_TAIL, LogBlock, LogQuery, logs_command, parse_logs

if TYPE_CHECKING:
    from remediations.core.results import RunResult

UNIT_NAME = re.compile(r"[A-Za-z0-9_.@:\\-]{1,255}")
MAX_PATTERN = 500
COMMAND_TIMEOUT = 300.0  # one host's logs: however big, they are filtered and cut on the host


def unit_name(value: Any, flag: str) -> str:
    text = str(value)
    if not UNIT_NAME.fullmatch(text) or text.startswith("-"):
        raise UsageError(f"{flag} {shown(value)}: not a systemd unit name (letters, digits and "
                         "_ . @ : \\ -, such as ringo-api.service)")  # fmt: skip
    return text


def pattern(value: Any, flag: str) -> str:
    text = str(value)
    if not text or len(text) > MAX_PATTERN or re.search(r"[\x00-\x1f\x7f]", text):
        raise UsageError(f"{flag} {shown(value)}: give one line of text to look for, 1 to "
                         f"{MAX_PATTERN} characters, no control characters (a newline would be a "
                         "second pattern)")  # fmt: skip
    return text


def since(value: Any, flag: str) -> float:
    from remediations.core.units import parse_seconds

    seconds = parse_seconds(value, flag, "give a duration such as 1h, 30m, 24h or 7d (how far back)")
    if seconds <= 0:
        raise UsageError(f"{flag} {shown(value)}: give a duration longer than 0s, such as 1h or 30m")
    return seconds


def check_regex(text: str, flag: str = "--grep") -> None:
    """Refuse the patterns every regex dialect refuses (an unclosed group or bracket); any other
    pattern grep -E itself judges, on the host."""
    try:
        re.compile(text)
    except re.error as exc:
        if any(words in str(exc) for words in ("missing )", "unbalanced parenthesis", "unterminated")):
            raise UsageError(f"{flag} {shown(text)}: not a regular expression ({exc}); without --regex "
                             "the text is looked for as it is") from None  # fmt: skip


class Logs(Remediation):
    """Show the recent log lines of a compose service (and/or a systemd unit) on each host.

    Each line is printed as `HOST SERVICE | line`. The lines are filtered and cut ON the host: `docker
    logs` of each of the service's containers (`journalctl -u UNIT` with --unit) goes through grep
    (--grep: the text as it is, case-insensitively; --regex: a POSIX extended regular expression;
    --match-case), and only the last --tail lines per container travel back, with a line saying how
    many earlier ones were cut. Secrets are masked: the inventory's, and the values of the
    container's env whose names look secret, and URL passwords. Read-only: takes no host lock.
    """

    task: ClassVar[str] = "logs"
    changes_hosts: ClassVar[bool] = False
    changes: ClassVar[bool] = False
    params = args(
        replace(SERVICE, help="compose service whose containers' logs to read (default: the host's "
                              "api_service var; with only --unit given, none)"),
        Arg("unit", "a systemd unit whose journal to read (journalctl -u) on hosts with systemd",
            parse=unit_name, example="ringo-api.service"),
        Arg("since", "only lines newer than this, a duration such as 1h, 30m or 24h (default: the whole "
                     "log, of which the last --tail lines)", parse=since, example="1h"),
        Arg("grep", "only lines containing this text, in any case (grep -F -i on the host)",
            parse=pattern, example="error"),
        Arg("regex", kind="flag", help="--grep is a POSIX extended regular expression (grep -E), "
                                       "such as 'error|traceback'"),
        Arg("match_case", kind="flag", help="--grep matches upper and lower case exactly"),
        Arg("tail", f"at most the last N lines per container or unit (default {DEFAULT_TAIL}, at most "
                    f"{MAX_TAIL})", parse=count(1, MAX_TAIL), example="50"),
        Arg("timestamps", kind="flag", help="put docker's timestamp before each container line (--grep "
                                            "sees it too)"),
    )  # fmt: skip

    def __init__(self, service: str | None = None, unit: str | None = None, since: float | None = None,
                 grep: str | None = None, regex: bool = False, match_case: bool = False,
                 tail: int | None = None, timestamps: bool = False) -> None:  # fmt: skip
        if regex and grep is None:
            raise UsageError("--regex says how to read --grep: give --grep PATTERN too")
        if match_case and grep is None:
            raise UsageError("--match-case says how to match --grep: give --grep PATTERN too")
        if regex and grep is not None:
            check_regex(grep)
        self.service = None if service is None else validate.check_service(service)
        self.unit = unit
        self.query = LogQuery(since, grep, regex, match_case, tail or DEFAULT_TAIL, timestamps)

    def arguments(self) -> dict[str, Any]:
        return {"service": self.service, "unit": self.unit, **vars(self.query)}

    def _service(self, host: Host) -> str | None:
        if self.service:
            return self.service
        return None if self.unit else str(host.get("api_service") or "") or None

    def validate(self, host: Host) -> None:
        super().validate(host)
        if self.service or not self.unit:
            if not (self.service or host.get("api_service")):
                host.require("api_service")
            Project.from_host(host)

    def run(self, ctx: HostContext) -> None:
        service = self._service(ctx.host)
        project = Project.from_host(ctx.host) if service else None
        with ctx.step("read") as step:
            command = logs_command(project, service, self.unit, self.query)
            result = ctx.remote.run(command, timeout=COMMAND_TIMEOUT)
            if result.exit_code != 0:
                raise HostError(f"reading logs failed (exit {result.exit_code}): {result.tail()}", result)
            facts = parse_logs(service, result)
            if facts.error and not facts.blocks:
                raise HostError(facts.error)
            if facts.service is not None and facts.service.error:
                raise HostError(facts.service.error)
            learn_env_secrets(ctx, facts.env.values())
            step.done(Status.OK, f"{len(facts.blocks)} source(s) read")
        for block in facts.blocks:
            self._record(ctx, block, service)
        if facts.service is not None and not facts.service.containers:
            ctx.record("logs", Status.OK, f"{service}: no container exists, so no log", service=service)
        if facts.error:  # a unit asked for on a host without journalctl, beside a service's logs
            ctx.record("journal", Status.FAILED, facts.error, unit=self.unit)
        failed = [b for b in facts.blocks if b.error]
        total = sum(len(b.lines) for b in facts.blocks)
        cut = sum(b.cut for b in facts.blocks)
        summary = f"{total} line(s) from {len(facts.blocks)} source(s)"
        summary += f", {cut} earlier cut" if cut else ""
        if failed:
            ctx.record("logs", Status.FAILED, "; ".join(b.error for b in failed))
        elif not facts.error:
            ctx.record("summary", Status.OK, summary, lines=total, cut=cut)

    def _record(self, ctx: HostContext, block: LogBlock, service: str | None) -> None:
        lines = shown_output(ctx, block.lines)
        label = block.name if block.source == "journal" else (service or block.name)
        where = f"{label} ({block.name})" if block.source == "container" else label
        cut = f"; {block.cut} earlier line(s) cut (--tail {self.query.tail})" if block.cut else ""
        ctx.record("lines", Status.FAILED if block.error else Status.OK,
                   block.error or f"{where}: {len(lines)} line(s){cut}",
                   source=block.source, service=service if block.source == "container" else None,
                   container=block.name if block.source == "container" else None,
                   unit=block.name if block.source == "journal" else None,
                   label=label, lines=lines, matched=block.matched, cut=block.cut)  # fmt: skip

    @classmethod
    def report(cls, run: RunResult, as_json: bool) -> None:
        if not as_json:
            text = listing(run.hosts)
            if text:
                print(text)


def listing(hosts: list[HostResult]) -> str:
    """Every host's lines, `HOST LABEL | line`; a cut as `HOST LABEL -- N earlier line(s) cut`."""
    out: list[str] = []
    for host in hosts:
        for step in host.steps:
            if step.step != "lines":
                continue
            label = str(step.data.get("label", ""))
            several = sum(1 for s in host.steps if s.step == "lines" and s.data.get("label") == label) > 1
            if several and step.data.get("container"):
                label = f"{label}/{step.data['container']}"
            head = f"{host.host} {label}"
            if step.data.get("cut"):
                out.append(f"{head} -- {step.data['cut']} earlier line(s) cut (raise --tail, or narrow "
                           "--since / --grep)")  # fmt: skip
            out += [f"{head} | {line}" for line in step.data.get("lines", [])]
    return "\n".join(out)
