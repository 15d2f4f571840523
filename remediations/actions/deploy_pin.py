"""What a deploy pins, and what it leaves behind while it runs: the pure half of `inv deploy`.

How the image is pinned depends on how the team's compose file names it (read, never edited):

- `image: registry/api:${API_TAG}` (a variable, with or without a default): the variable is set in
  the project's `.env`, the file compose interpolates from; every later `compose up` keeps it;
- `image: registry/api:1.4` (a fixed name): that name is pointed at the new image (`docker tag`),
  which is what `compose pull` of a fixed tag does too; every later `compose up` keeps it. Other
  services created from the same name would move with it at their next recreate: refused unless
  `--also-move` (as rollback does).

While a deploy runs, a marker file on the host (`{state_dir}/deploy-PROJECT-SERVICE.json`) says
what ran before it (the image to go back to), where it was going and how it pinned: a deploy that
was interrupted (SIGTERM, a lost connection) is finished or undone by the next run, which reads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from remediations.actions.image_history import repository
from remediations.actions.image_record import Sighting
from remediations.core.inventory import Host
from remediations.facts.compose import DEFAULT_STATE_DIR

PULL_TIMEOUT = 600.0  # seconds one `docker pull` may take
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # Docker's own rule for a tag
# One interpolation as compose writes it: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, $NAME.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Pin:
    """How the service's image is named in its compose file."""

    template: str  # the image as the compose file writes it
    variable: str = ""  # "" for a fixed name (pinned by retagging it)
    prefix: str = ""
    suffix: str = ""
    error: str = ""

    @property
    def by_env(self) -> bool:
        return bool(self.variable)

    def value_for(self, ref: str) -> str | None:
        """Pure: the variable's value that makes the template name `ref`; None when none does."""
        if not ref.startswith(self.prefix) or not ref.endswith(self.suffix):
            return None
        value = (
            ref[len(self.prefix) : len(ref) - len(self.suffix)] if self.suffix else ref[len(self.prefix) :]
        )
        return value or None


def pin_of(template: str) -> Pin:
    """Pure: how `template` (the compose file's `image:`, not interpolated) is pinned."""
    text = template.replace("$$", "\0")  # `$$` is a literal dollar, not a variable
    found = list(VARIABLE.finditer(text))
    if not found:
        return Pin(template)
    if len(found) > 1:
        names = ", ".join(sorted({m.group(1) or m.group(4) for m in found}))
        return Pin(template, error=f"its image {template!r} uses several variables ({names}); deploy pins "
                   "one: write it as name:${TAG}, or a fixed name")  # fmt: skip
    match = found[0]
    prefix, suffix = text[: match.start()], text[match.end() :]
    if "\0" in prefix + suffix or "$" in prefix + suffix:
        return Pin(template, error=f"its image {template!r} is not one a deploy can pin")
    return Pin(template, match.group(1) or match.group(4), prefix, suffix)


def target_ref(wanted: str | None, current_ref: str) -> str:
    """Pure: the image name to deploy: `--image` as given when it is a name (`local/api:2`), the
    service's repository with that tag when it is a tag alone (`2`), else what compose names now."""
    if not wanted:
        return current_ref
    if TAG.fullmatch(wanted) and not wanted.startswith("sha256"):
        return f"{repository(current_ref)}:{wanted}"
    return wanted


def image_template(services: list[dict[str, object]], service: str) -> str:
    """Pure: the service's `image:` as the compose files write it (the last file naming one wins)."""
    found = ""
    for defined in services:
        body = defined.get(service)
        if isinstance(body, dict) and isinstance(body.get("image"), str):
            found = str(body["image"])
    return found


# --- the marker of a deploy in progress ----------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """A deploy in progress: what to go back to if it does not end healthy."""

    from_id: str  # the image the service ran before the deploy
    from_ref: str  # the name it was created from
    to_ref: str
    to_id: str
    variable: str = ""  # env pin: the variable set in .env
    env_before: str | None = None  # its value before (None: it was not set)
    started: str = ""
    holder: str = ""

    def render(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, indent=1, sort_keys=True) + "\n"

    def describe(self) -> str:
        by = f" by {self.holder}" if self.holder else ""
        return f"an interrupted deploy of {self.to_ref} (started {self.started or 'at an unknown time'}{by})"


def parse_marker(text: str) -> tuple[Marker | None, str]:
    """Pure: the marker, or None; and why it could not be read ("" when it was, or there is none)."""
    if not text.strip():
        return None, ""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1 or not str(data.get("from_id", "")):
            raise ValueError("not a version 1 marker")
        before = data.get("env_before")
        marker = Marker(
            str(data["from_id"]), str(data.get("from_ref", "")), str(data.get("to_ref", "")),
            str(data.get("to_id", "")), str(data.get("variable", "")),
            None if before is None else str(before), str(data.get("started", "")),
            str(data.get("holder", "")),
        )  # fmt: skip
    except (ValueError, KeyError) as exc:
        return None, f"the marker of an earlier deploy cannot be read ({exc})"
    return marker, ""


def marker_path(host: Host, project: str, service: str) -> str:
    state_dir = str(host.get("state_dir") or DEFAULT_STATE_DIR).rstrip("/")
    return f"{state_dir}/deploy-{project}-{service}.json"


def without_failed(history: list[Sighting], back: str, failed: str) -> list[Sighting]:
    """Pure: the image record of a service once a deploy of `failed` was rolled back to `back`: the
    two sightings it left (`failed`, then `back` again) dropped, so that "the image before the
    current one" is still the one before the deploy, not the image that failed."""
    ids = [s.image_id for s in history[-3:]]
    if ids == [back, failed, back]:
        return history[:-2]
    return history
