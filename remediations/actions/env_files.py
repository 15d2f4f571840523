"""A compose project's env files: which services read which file, reading them beside the running
environment, writing them with a dated backup.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import yaml

from remediations.actions import remote_write
from remediations.core.errors import UsageError
from remediations.core.remote import Remote, must
from remediations.facts import envfile
from remediations.facts.compose import Project, ServiceFacts
from remediations.facts.sections import MARK, sections_by_name


@dataclass(frozen=True)
class EnvFileFacts:
    path: str  # absolute
    exists: bool
    text: str
    owner: str  # "uid:gid"
    mode: str  # octal, such as "600"


def compose_services(compose_texts: Sequence[str]) -> list[dict[str, Any]]:
    """Pure: the `services:` mapping of each compose file, in order ({} for one that is not YAML)."""
    found: list[dict[str, Any]] = []
    for text in compose_texts:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            data = {}
        services = data.get("services") if isinstance(data, dict) else None
        found.append(services if isinstance(services, dict) else {})
    return found


def compose_texts(remote: Remote, project: Project) -> list[str]:
    """The texts of the compose files compose reads for the project (`Project.chosen_files`), in one
    round trip: every candidate, and only the COMPOSE_FILE line of the project's .env (the rest of
    that file, secrets among them, is not read)."""
    candidates = project.file_candidates()
    dotenv = shlex.quote(posixpath.join(project.directory, ".env"))
    grep = f"grep -E '^[[:space:]]*(export[[:space:]]+)?COMPOSE_FILE=' {dotenv} 2>/dev/null | tail -n 1"
    command = _read_files_command(candidates) + f"\necho '{MARK}composefile'; {grep}"
    sections = sections_by_name(must(remote.run(command, timeout=30), "reading the compose files").stdout)
    files = _files(sections, candidates)
    line = sections.get("composefile", ("", ""))[1]
    compose_file = "" if project.files else envfile.parse(line + "\n").get("COMPOSE_FILE", "")
    chosen = project.chosen_files([f.path for f in files if f.exists], compose_file)
    by_path = {f.path: f for f in files}
    missing = [p for p in chosen if p not in by_path]
    more = {f.path: f for f in read_files(remote, missing)[0]} if missing else {}
    return [(by_path.get(p) or more[p]).text for p in chosen]


def env_file_of(service: str, compose_texts: Sequence[str], project_dir: str) -> list[str]:
    """Pure: the env files compose reads for `service`, absolute, in order (later ones win)."""
    files: list[str] = []
    for services in compose_services(compose_texts):
        body = services.get(service) or {}
        entry = body.get("env_file") if isinstance(body, dict) else None
        if entry is None:
            continue
        entries = entry if isinstance(entry, list) else [entry]
        found = []
        for item in entries:
            path = item.get("path") if isinstance(item, dict) else item
            if path:
                found.append(posixpath.normpath(posixpath.join(project_dir, str(path))))
        files = found  # a later compose file replaces the list, as compose merges env_file
    return files


def services_reading(path: str, compose_texts: Sequence[str], project_dir: str) -> list[str]:
    """Pure: every service whose env files include `path`."""
    names = {str(name) for services in compose_services(compose_texts) for name in services}
    return sorted(n for n in names if path in env_file_of(n, compose_texts, project_dir))


def _read_files_command(paths: Sequence[str], facts: ServiceFacts | None = None) -> str:
    """Each file's owner, mode and text; with `facts`, also the env its first container runs with."""
    parts = []
    for i, path in enumerate(paths):
        q = shlex.quote(path)
        parts.append(
            f"if [ -f {q} ]; then echo '{MARK}file{i} '$(stat -c '%u:%g:%a' {q}); cat {q}; "
            f"else echo '{MARK}file{i} missing'; fi"
        )
    if facts is not None and facts.containers:
        parts.append(_env_command("env", facts))
    return "\n".join(parts)


def _env_command(section: str, facts: ServiceFacts) -> str:
    """A marked section with the env the service's first container runs with."""
    inspect = shlex.join(["docker", "inspect", "--format", "{{json .Config.Env}}", facts.containers[0].id])
    return f"echo '{MARK}{section}'; {inspect} 2>/dev/null"


def running_envs(remote: Remote, facts: Mapping[str, ServiceFacts]) -> dict[str, dict[str, str]]:
    """The env each service's first container runs with ({} when it has none): one round trip."""
    names = [name for name, f in facts.items() if f.containers]
    if not names:
        return {name: {} for name in facts}
    command = "\n".join(_env_command(f"env{i}", facts[name]) for i, name in enumerate(names))
    sections = sections_by_name(must(remote.run(command, timeout=30), "reading containers' env").stdout)
    found = {name: _parse_env(sections.get(f"env{i}", ("", ""))[1]) for i, name in enumerate(names)}
    return {name: found.get(name, {}) for name in facts}


def _parse_env(text: str) -> dict[str, str]:
    """Pure: `docker inspect --format '{{json .Config.Env}}'` output as a dict (secrets never printed)."""
    try:
        items = json.loads(text) if text.strip() else []
    except ValueError:
        return {}
    return dict(item.split("=", 1) for item in items if isinstance(item, str) and "=" in item)


def read_files(
    remote: Remote, paths: Sequence[str], facts: ServiceFacts | None = None
) -> tuple[list[EnvFileFacts], dict[str, str]]:
    """The files, and (with `facts`) the env the service's first container runs with: one round trip."""
    result = must(remote.run(_read_files_command(paths, facts), timeout=30), "reading files")
    sections = sections_by_name(result.stdout)
    return _files(sections, paths), _parse_env(sections.get("env", ("", ""))[1])


def _files(sections: dict[str, tuple[str, str]], paths: Sequence[str]) -> list[EnvFileFacts]:
    """Pure: the files of `_read_files_command`'s sections."""
    out = []
    for i, path in enumerate(paths):
        head, body = sections.get(f"file{i}", ("missing", ""))
        if head == "missing":
            out.append(EnvFileFacts(path, False, "", "", ""))
        else:
            uid, gid, mode = [*head.split(":"), "", "", ""][:3]
            out.append(EnvFileFacts(path, True, body + ("\n" if body else ""), f"{uid}:{gid}", mode))
    return out


def env_file_write(
    path: str, text: str, owner: str, mode: str, backup: str | None, backup_mode: str | None = None,
    keep: int | None = None,
) -> remote_write.Write:  # fmt: skip
    """The new env file as one checked write: backup (same owner and mode, or `backup_mode`), a temp
    file whose size and SHA-256 are checked, then the rename (see remote_write); with `keep`, then
    all but the newest `keep` dated backups of the file are deleted."""
    prune = prune_backups_command(path, keep) if backup and keep is not None else ""
    return remote_write.Write(path, text.encode(), mode=mode or "600", owner=owner, backup=backup,
                              backup_mode=backup_mode, then=prune)  # fmt: skip


# backup_name's stamp as a glob: only files this project named are ever pruned.
BACKUP_STAMP_GLOB = "[0-9]" * 8 + "T" + "[0-9]" * 6 + "Z"


def prune_backups_command(path: str, keep: int) -> str:
    """Shell text deleting all but the newest `keep` backups of `path` (their names sort by date, and
    so does the glob). Backups hold old secrets: without this they pile up forever. A failure here
    never fails the write that came before it."""
    if keep < 1:
        raise ValueError("keep at least the backup just made")
    pattern = f"{shlex.quote(path)}.{BACKUP_STAMP_GLOB}.bak"
    return (
        f"set -- {pattern}; if [ -e \"$1\" ]; then "
        f'while [ "$#" -gt {int(keep)} ]; do rm -f -- "$1" || true; shift; done; fi'
    )


def backup_name(path: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{path}.{stamp}.bak"


def values_from_stdin(stream: IO[str] | None = None) -> dict[str, str]:
    """`--values-from-stdin`: NAME=VALUE lines piped in, so that no value is in the controller's argv
    (where `ps` shows it to every user of the machine)."""
    stream = stream if stream is not None else sys.stdin
    if stream.isatty():
        raise UsageError("--values-from-stdin: pipe NAME=VALUE lines in (printf 'NAME=%s\\n' \"$VALUE\" | "
                         "inv set-env …), not from a terminal")  # fmt: skip
    return envfile.parse_value_lines(stream.read(), "--values-from-stdin")
