"""Facts about a compose service, gathered in one round trip, and the compose commands to act on it.

Supports Compose v2 (`docker compose`) and v1 (`docker-compose`); which one a host has is a fact.
Container state comes from `docker inspect` JSON, never from human-readable tables.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from remediations.core.errors import CommandResult, HostError
from remediations.core.inventory import Host
from remediations.core.remote import Remote, must
from remediations.facts.sections import MARK, sections_by_name

HTTP_BODY_LIMIT = 300
DEFAULT_STATE_DIR = "/var/lib/remediations"
RECORD_FILE = "images.json"


# The names compose looks for in the project directory when no -f is given, in the order it picks
# one (it warns when several exist and uses the first), and the override file it then adds.
DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = tuple(name.replace(".y", ".override.y") for name in DEFAULT_FILES)
CONFIG_ERROR = "compose configuration: "


@dataclass(frozen=True)
class Project:
    """A compose project on a host, from inventory vars.

    Without `compose_files` no -f is passed, and without `compose_project_name` no -p: compose, run
    in the project directory, finds its files and its name as it does by hand (`name:`, the
    directory's name, COMPOSE_FILE / COMPOSE_PROJECT_NAME in the project's .env). `name` is then
    the directory's name, used only to key the host's own records."""

    directory: str
    name: str
    files: tuple[str, ...]  # empty: the files compose finds by itself
    explicit_name: bool = True

    @classmethod
    def from_host(cls, host: Host) -> Project:
        directory = str(host.require("compose_project_dir"))
        files = host.get("compose_files") or []
        if isinstance(files, str):
            files = [files]
        given = host.get("compose_project_name")
        name = str(given or directory.rstrip("/").rsplit("/", 1)[-1])
        return cls(directory, name, tuple(str(f) for f in files), bool(given))

    def argv(self, variant: str, *args: str) -> list[str]:
        base = ["docker", "compose"] if variant == "v2" else ["docker-compose"]
        files = [arg for f in self.files for arg in ("-f", f)]
        name = ["-p", self.name] if self.explicit_name else []
        return [*base, *name, *files, *args]

    def command(self, variant: str, *args: str) -> str:
        """Shell text that runs compose in the project directory, every argument quoted."""
        return f"cd {shlex.quote(self.directory)} && {shlex.join(self.argv(variant, *args))}"

    def file_candidates(self) -> list[str]:
        """Absolute paths of the compose files compose may read: the `compose_files`, else every
        name compose looks for (`chosen_files` picks among those that exist)."""
        names = self.files or (*DEFAULT_FILES, *OVERRIDE_FILES)
        return [posixpath.join(self.directory, name) for name in names]

    def chosen_files(self, existing: Sequence[str], compose_file_var: str = "") -> list[str]:
        """Pure: of the `file_candidates` that exist, the ones compose reads, in order: the
        `compose_files`; else COMPOSE_FILE (from the project's .env), else the first default name
        found plus the first override name found."""
        if self.files:
            return self.file_candidates()
        if compose_file_var:
            parts = [p for p in compose_file_var.split(":") if p]
            return [posixpath.normpath(posixpath.join(self.directory, p)) for p in parts]
        base = [posixpath.join(self.directory, n) for n in DEFAULT_FILES]
        over = [posixpath.join(self.directory, n) for n in OVERRIDE_FILES]
        first = next((p for p in base if p in existing), None)
        if first is None:
            return []
        return [first, *[p for p in over if p in existing][:1]]


def config_error(stderr: str, code: str) -> str:
    """Pure: compose's own first error line, after its warnings (`level=warning`, `WARNING:`)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "level=warning" not in line and not line.startswith("WARNING")]
    text = (errors or lines or [f"exit {code}"])[0][:300]
    if "no configuration file provided" in text:  # compose names neither the folder nor the names
        names = ", ".join(DEFAULT_FILES)
        text += f" (compose looks in the project directory for {names}; or set compose_files)"
    return CONFIG_ERROR + text


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    state: str
    started_at: str
    health: str | None
    health_output: str
    image_id: str
    service: str = ""
    image_ref: str = ""  # the image name the container was created from, such as local/api:1
    project: str = ""  # its compose project, as compose labelled it

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> Container:
        state = data.get("State") or {}
        config = data.get("Config") or {}
        labels = config.get("Labels") or {}
        health = state.get("Health") or None
        log = (health or {}).get("Log") or []
        last = log[-1] if log else {}
        return cls(
            id=str(data.get("Id", ""))[:12],
            name=str(data.get("Name", "")).lstrip("/"),
            state=str(state.get("Status", "unknown")),
            started_at=str(state.get("StartedAt", "")),
            health=(health or {}).get("Status"),
            health_output=str(last.get("Output", "")).strip()[-HTTP_BODY_LIMIT:],
            image_id=str(data.get("Image", "")),
            service=str(labels.get("com.docker.compose.service", "")),
            image_ref=str(config.get("Image", "")),
            project=str(labels.get("com.docker.compose.project", "")),
        )


@dataclass(frozen=True)
class ServiceFacts:
    """What is true of one service right now."""

    service: str
    variant: str
    containers: tuple[Container, ...] = ()
    http_url: str | None = None
    http_exit: int | None = None
    http_output: str = ""
    error: str = ""
    record: str | None = None  # the image record file's text, when the facts read it

    def verdict(self) -> tuple[bool, str]:
        """(healthy, why), in words for the result line."""
        if self.error:
            return False, self.error
        if not self.containers:
            return False, f"no {self.service} container exists"
        for c in self.containers:
            if c.state != "running":
                return False, f"container {c.name} is {c.state}"
            if c.health == "starting":
                return False, f"container {c.name} health check is still starting"
            if c.health == "unhealthy":
                detail = f": {c.health_output}" if c.health_output else ""
                return False, f"container {c.name} is unhealthy{detail}"
        if self.http_url and self.http_exit != 0:
            detail = self.http_output.strip() or f"exit {self.http_exit}"
            return False, f"{self.http_url} failed: {detail}"
        checks = []
        if any(c.health for c in self.containers):
            checks.append("docker health healthy")
        if self.http_url:
            checks.append(f"{self.http_url} answers")
        return True, "running" + (", " + ", ".join(checks) if checks else " (no health check)")

    @property
    def healthy(self) -> bool:
        return self.verdict()[0]

    def restarted_since(self, before: ServiceFacts) -> bool:
        """Every container started after the one it replaces (or is new)."""
        old = {c.name: c.started_at for c in before.containers}
        return bool(self.containers) and all(c.started_at != old.get(c.name) for c in self.containers)

    def project_label(self, project: Project) -> str:
        """The compose project label its containers carry: the name given to compose (-p), else the
        one every container of it was labelled with; "" when neither is known."""
        if project.explicit_name:
            return project.name
        labels = {c.project for c in self.containers}
        return labels.pop() if len(labels) == 1 and "" not in labels else ""


def _preamble(project: Project) -> list[str]:
    """Shell lines: enter the project directory (or report it missing), and make a temp directory
    "$t" for compose's output and stderr, kept apart: compose prints warnings on stderr that must
    not be taken for container ids."""
    q = shlex.quote
    return [
        f"cd {q(project.directory)} 2>/dev/null || {{ echo '{MARK}error'; "
        f"echo {q('project directory ' + project.directory + ' does not exist')}; exit 0; }}",
        f"t=$(mktemp -d) || {{ echo '{MARK}error'; echo 'mktemp -d failed on the host'; exit 0; }}",
    ]


def label_filters(project_label: str, service: str | None = None) -> list[str]:
    """`docker ps` arguments selecting the containers compose counts as the project's (or its
    service's): compose's own labels, one-off containers (`compose run`) excluded, as `compose ps`
    does."""
    labels = [f"com.docker.compose.project={project_label}", "com.docker.compose.oneoff=False"]
    if service is not None:
        labels.insert(1, f"com.docker.compose.service={service}")
    return [arg for label in labels for arg in ("--filter", f"label={label}")]


def _ps_by_label(project_label: str, service: str | None) -> str:
    argv = ["docker", "ps", "-a", "-q", "--no-trunc", *label_filters(project_label, service)]
    return shlex.join(argv)


def _inspect_lines() -> list[str]:
    """Shell lines after "$ids" is set: `docker inspect` of the ids."""
    return [
        f'echo "{MARK}inspect"',
        # ids are hex container ids; anything else is compose's error text, reported as such.
        'case "$ids" in *[!0-9a-f[:space:]]*) ;; ?*) docker inspect $ids 2>/dev/null ;; esac',
    ]


def _http_probe(url: str, section: str, http_timeout: float) -> str:
    """Shell text fetching `url` from the host (curl, else wget) into section `@@SECTION exit`."""
    q = shlex.quote
    timeout = str(max(1, int(http_timeout)))
    return (
        "if command -v curl >/dev/null 2>&1; then "
        f"out=$(curl -fsS -m {timeout} {q(url)} 2>&1); rc=$?; "
        "elif command -v wget >/dev/null 2>&1; then "
        f"out=$(wget -q -O- -T {timeout} {q(url)} 2>&1); rc=$?; "
        "else out='no curl or wget on the host'; rc=127; fi\n"
        f'echo "{MARK}{section} $rc"; printf "%s\\n" "$out" | head -c {HTTP_BODY_LIMIT}'
    )


def _config_and_ps(project: Project, *ps_service: str) -> list[str]:
    """Shell lines: the compose variant, the project's services (`config --services`, which is also
    compose's check of its configuration: its stderr goes to section `cferr`), then, only when that
    worked, the ids of its (or `ps_service`'s) containers and their `docker inspect`.

    Compose v2 is tried first, and its configuration is read in the background while the containers
    are listed by compose's labels (when the project's name is given; `docker ps` starts far quicker
    than compose). Only when v2's reading fails is `compose version` asked, to tell a configuration
    problem from a host without v2 (then v1, as before)."""

    def both(*args: str) -> str:  # the command in whichever compose the host has
        v2, v1 = shlex.join(project.argv("v2", *args)), shlex.join(project.argv("v1", *args))
        return f"case $v in (v2) {v2} ;; (v1) {v1} ;; esac"

    v2_config = shlex.join(project.argv("v2", "config", "--services"))
    v1_config = shlex.join(project.argv("v1", "config", "--services"))
    by_label = _ps_by_label(project.name, ps_service[0] if ps_service else None)
    lines = [f'{{ {v2_config} >"$t/svc" 2>"$t/cferr"; echo $? >"$t/src"; }} &']
    if project.explicit_name:
        lines.append(f'ids=$({by_label} 2>"$t/pserr"); psrc=$?; labelled=1')
    lines += [
        'wait; src=$(cat "$t/src" 2>/dev/null || echo 1)',
        'if [ "$src" = 0 ] || docker compose version >/dev/null 2>&1; then v=v2; '
        f'elif docker-compose version >/dev/null 2>&1; then v=v1; {v1_config} >"$t/svc" 2>"$t/cferr"; '
        "src=$?; else v=none; fi",
        f'echo "{MARK}compose $v"',
        f'echo "{MARK}services $src"; cat "$t/svc" 2>/dev/null',
        f'echo "{MARK}cferr"; head -c 2000 "$t/cferr" 2>/dev/null',
        'if [ "$src" != 0 ]; then ids= psrc=0; '
        'elif [ "$v" != v2 ] || [ -z "${labelled:-}" ]; then '
        f'ids=$({both("ps", "-a", "-q", *ps_service)} 2>"$t/pserr"); psrc=$?; fi',
        f'echo "{MARK}ps $psrc"; printf "%s\\n" "$ids"',
        f'echo "{MARK}pserr"; head -c 2000 "$t/pserr" 2>/dev/null; rm -rf "$t"',
        *_inspect_lines(),
    ]
    return lines


def facts_command(
    project: Project, service: str, http_url: str | None, http_timeout: float, record: str | None = None
) -> str:
    """One shell command that prints every fact about the service in marked sections; with `record`
    (the image record's path, see `record_path`), that file too (section `record`)."""
    lines = [*_preamble(project), *_config_and_ps(project, service)]
    if http_url:
        lines.append(_http_probe(http_url, "http", http_timeout))
    if record:
        lines.append(_record_lines(record))
    return "\n".join(lines)


def _record_lines(path: str) -> str:
    # A host without a record yet is no failure of the facts: the section is empty.
    return f'echo "{MARK}record"; cat {shlex.quote(path)} 2>/dev/null || :'


def poll_command(project_label: str, service: str, http_url: str | None, http_timeout: float) -> str:
    """One health poll of a service whose project is known by its compose label: its containers
    (`docker ps` by compose's labels, `docker inspect`) and its URL, no compose invocation (the
    configuration was read by the facts before the wait)."""
    lines = [
        f'ids=$({_ps_by_label(project_label, service)} 2>&1); echo "{MARK}ps $?"; printf "%s\\n" "$ids"',
        *_inspect_lines(),
    ]
    if http_url:
        lines.append(_http_probe(http_url, "http", http_timeout))
    return "\n".join(lines)


def _configuration(sections: dict[str, tuple[str, str]]) -> tuple[tuple[str, ...], str]:
    """Pure: the project's services, or compose's own words on what is wrong with its configuration."""
    code, text = sections.get("services", ("1", ""))
    if code != "0":
        return (), config_error(sections.get("cferr", ("", ""))[1] or text, code)
    return tuple(line.strip() for line in text.splitlines() if line.strip()), ""


def unknown_service(names: Sequence[str], services: Sequence[str]) -> str:
    """The one wording of "no such service" every task uses (the services sorted: compose lists them
    in no fixed order)."""
    defined = ", ".join(sorted(services)) or "none"
    return f"unknown service {', '.join(map(repr, names))}: the project has {defined}"


def _containers(
    sections: dict[str, tuple[str, str]],
) -> tuple[tuple[Container, ...], str]:
    """Pure: the inspected containers of the ps/inspect sections, or an error in words."""
    ps_code, ps_out = sections.get("ps", ("1", ""))
    ps_err = sections.get("pserr", ("", ""))[1].strip()
    if ps_code != "0":
        detail = ps_err or ps_out.strip() or f"exit {ps_code}"
        return (), f"compose ps failed: {detail[-300:]}"
    ids = _ids(ps_out)
    inspect_text = sections.get("inspect", ("", ""))[1].strip()
    if ids and not inspect_text:
        noise = next((line for line in ps_out.splitlines() if line.strip() and not _all_hex(line)), "")
        said = f" (compose printed: {noise.strip()[:200]})" if noise else ""
        return (), f"containers {' '.join(i[:12] for i in ids)} could not be inspected{said}"
    if not inspect_text:
        return (), ""
    try:
        return tuple(Container.from_inspect(c) for c in json.loads(inspect_text)), ""
    except (ValueError, TypeError, AttributeError):
        return (), "docker inspect printed something that is not JSON"


def _http(sections: dict[str, tuple[str, str]], section: str) -> tuple[int | None, str]:
    """Pure: (exit code, output) of an HTTP probe section; (None, "") when it did not run."""
    if section not in sections:
        return None, ""
    code, output = sections[section]
    return (int(code) if code.lstrip("-").isdigit() else 1), output.strip()


def parse_facts(service: str, http_url: str | None, result: CommandResult) -> ServiceFacts:
    """Pure parser of `facts_command` output."""
    sections = sections_by_name(result.stdout)
    if "error" in sections:
        return ServiceFacts(service, "none", error=sections["error"][1].strip())
    variant = sections.get("compose", ("none", ""))[0]
    if variant == "none":
        return ServiceFacts(service, variant, error="neither 'docker compose' nor 'docker-compose' works")
    services, error = _configuration(sections)
    if not error and service not in services:
        error = unknown_service([service], services)
    if error:
        return ServiceFacts(service, variant, error=error)
    containers, error = _containers(sections)
    if error:
        return ServiceFacts(service, variant, error=error)
    http_exit, http_output = _http(sections, "http") if http_url else (None, "")
    record = sections["record"][1] if "record" in sections else None
    return ServiceFacts(service, variant, containers, http_url, http_exit, http_output, record=record)


def parse_poll(before: ServiceFacts, result: CommandResult) -> ServiceFacts:
    """Pure parser of `poll_command` output: the service's facts now (its variant from `before`)."""
    sections = sections_by_name(result.stdout)
    containers, error = _containers(sections)
    if error:
        return ServiceFacts(before.service, before.variant, error=error)
    http_exit, http_output = _http(sections, "http") if before.http_url else (None, "")
    return ServiceFacts(before.service, before.variant, containers, before.http_url, http_exit, http_output)


def _ids(text: str) -> list[str]:
    """Container ids among the lines of `compose ps -q` output (anything else is noise)."""
    return [w for w in (line.strip() for line in text.splitlines()) if len(w) >= 12 and _all_hex(w)]


def _all_hex(text: str) -> bool:
    return all(all(ch in "0123456789abcdef" for ch in word) for word in text.split())


def gather(
    remote: Remote,
    project: Project,
    service: str,
    http_url: str | None,
    timeout: float,
    record: str | None = None,
) -> ServiceFacts:
    command = facts_command(project, service, http_url, timeout, record)
    result = remote.run(command, timeout=timeout + 30)
    if result.exit_code not in (0,):
        raise HostError(f"gathering facts failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_facts(service, http_url, result)


def poll(remote: Remote, project_label: str, before: ServiceFacts, timeout: float) -> ServiceFacts:
    """One health poll (`poll_command`) of the service `before` describes."""
    command = poll_command(project_label, before.service, before.http_url, timeout)
    result = remote.run(command, timeout=timeout + 30)
    if result.exit_code != 0:
        raise HostError(f"polling health failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_poll(before, result)


def container_logs(remote: Remote, containers: Sequence[Container], lines: int = 20) -> str:
    """The last log lines of each container, for a failure message."""
    if not containers:
        return ""
    parts = []
    for c in containers:
        result = remote.run(shlex.join(["docker", "logs", "--tail", str(lines), c.id]) + " 2>&1", timeout=30)
        text = result.stdout.strip()
        if text:
            parts.append(f"[{c.name}] " + " | ".join(text.splitlines()[-lines:]))
    return "; ".join(parts)


def compose_run(
    remote: Remote, project: Project, variant: str, what: str, *args: str, timeout: float = 300
) -> CommandResult:
    return must(remote.run(project.command(variant, *args), timeout=timeout), what)


# ------------------------------------------------------------------ every service of a project


@dataclass(frozen=True)
class ProjectFacts:
    """Every service of a compose project (as its compose files define them) and its containers."""

    variant: str
    services: tuple[str, ...]
    facts: dict[str, ServiceFacts]
    error: str = ""
    record: str | None = None  # the image record file's text, when the facts read it

    def unknown(self, wanted: Sequence[str]) -> list[str]:
        return [s for s in wanted if s not in self.services]


def project_facts_command(
    project: Project, http_urls: dict[str, str], http_timeout: float, record: str | None = None
) -> str:
    """One shell command: compose variant, the project's services, all its containers, HTTP probes,
    and with `record` the image record file (see `facts_command`)."""
    lines = [*_preamble(project), *_config_and_ps(project)]
    lines += [_http_probe(url, f"http:{service}", http_timeout) for service, url in sorted(http_urls.items())]
    if record:
        lines.append(_record_lines(record))
    return "\n".join(lines)


def parse_project_facts(http_urls: dict[str, str], result: CommandResult) -> ProjectFacts:
    """Pure parser of `project_facts_command` output."""
    sections = sections_by_name(result.stdout)
    if "error" in sections:
        return ProjectFacts("none", (), {}, error=sections["error"][1].strip())
    variant = sections.get("compose", ("none", ""))[0]
    if variant == "none":
        return ProjectFacts(variant, (), {}, error="neither 'docker compose' nor 'docker-compose' works")
    services, error = _configuration(sections)
    if error:
        return ProjectFacts(variant, (), {}, error=error)
    containers, error = _containers(sections)
    if error:
        return ProjectFacts(variant, services, {}, error=error)
    facts: dict[str, ServiceFacts] = {}
    for service in services:
        url = http_urls.get(service)
        http_exit, http_output = _http(sections, f"http:{service}") if url else (None, "")
        mine = tuple(c for c in containers if c.service == service)
        facts[service] = ServiceFacts(service, variant, mine, url, http_exit, http_output)
    record = sections["record"][1] if "record" in sections else None
    return ProjectFacts(variant, services, facts, record=record)


def gather_project(
    remote: Remote, project: Project, http_urls: dict[str, str], timeout: float, record: str | None = None
) -> ProjectFacts:
    command = project_facts_command(project, http_urls, timeout, record)
    result = remote.run(command, timeout=timeout * 2 + 30)
    if result.exit_code != 0:
        raise HostError(f"gathering facts failed (exit {result.exit_code}): {result.tail()}", result)
    return parse_project_facts(http_urls, result)


def record_path(host: Host) -> str:
    """The host's image record (`{state_dir}/images.json`, see actions.image_record): the facts of
    every task that notes what a service runs read it in the same round trip."""
    return f"{str(host.get('state_dir') or DEFAULT_STATE_DIR).rstrip('/')}/{RECORD_FILE}"


def health_urls(host: Host, api_service: str | None = None) -> dict[str, str]:
    """Service -> HTTP health URL: the `health_urls` mapping, plus `api_health_url` for the api."""
    urls = {str(k): str(v) for k, v in (host.get("health_urls") or {}).items() if v}
    api = api_service or host.get("api_service")
    if api and host.get("api_health_url"):
        urls.setdefault(str(api), str(host.get("api_health_url")))
    return urls
