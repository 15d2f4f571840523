"""rotate-secret: a value in a compose env file generated (or given on stdin), set, tested by the
services' health, finished; rolled back to the backup when a service is unhealthy with it.

facts   the env file that sets the key and the services that read it (`actions.rotation.gather_env`),
        the newest rotation record of the key on the host (and, for an unfinished one, the value in
        its backup);
decide  nothing (the given value is in place, or the last rotation is younger than --max-age),
        finish or abandon an interrupted rotation, or rotate;
apply   record pending → write the file (backup 0600) → record set → recreate the readers, healthy
        with the new value → record done; unhealthy: the backup is put back and the services
        recreated (record rolled-back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from remediations.actions import rotation
from remediations.actions.rotation import EnvSide
from remediations.core import validate
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import UsageError
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age
from remediations.facts import envfile
from remediations.facts import rotation as records
from remediations.facts.rotation import Record


@dataclass(frozen=True)
class Facts:
    side: EnvSide
    record: Record | None  # the newest rotation of this key in this file
    backup: dict[str, str] | None  # an unfinished record's backup values (None: gone, or none)


class RotateSecret(Remediation):
    """Rotate a secret in a compose env file: backup (0600), atomic write, recreate, wait until healthy.

    Example: inv rotate-secret --host prod --name STRIPE_API_KEY
    The value is generated with the secrets module (or read from stdin) and goes to the host on
    stdin: never on a command line, in output, the audit log or a notification. Unhealthy after the
    change: the backup is restored and the services recreated. An interrupted rotation is finished
    (or rolled back) by the next run. `inv rotation-status` shows what was rotated when.
    """

    task: ClassVar[str] = "rotate-secret"
    params = args(
        Arg("name", "the env file variable to rotate, e.g. STRIPE_API_KEY", parse=records.key_arg),
        records.READERS,
        records.LENGTH,
        records.ALPHABET,
        # A switch: the value itself is read from stdin and is never an argument, so never audited.
        Arg("value_from_stdin", "take the new value from stdin (one line) instead of generating one",
            kind="flag"),
        Arg("create", "add the variable when the env file does not set it yet", kind="flag"),
        records.MAX_AGE,
    )  # fmt: skip
    required_vars: ClassVar[tuple[str, ...]] = ("compose_project_dir",)

    def __init__(
        self,
        name: str,
        services: Sequence[str] = (),
        length: int = records.DEFAULT_LENGTH,
        alphabet: str = records.DEFAULT_ALPHABET,
        value: str | None = None,
        create: bool = False,
        max_age: int = 3600,
    ) -> None:
        self.name = name
        self.services = validate.check_services(services)
        self.length = length
        self.alphabet = alphabet
        self._value = value  # given on stdin; never in arguments, audit or output
        self.create = create
        self.max_age = max_age

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RotateSecret:
        key = records.check_key(values["name"])  # not given: the same one line as a bad name
        length, alphabet = values["length"], values["alphabet"]
        if values["value_from_stdin"] and (length is not None or alphabet is not None):
            raise UsageError("--value-from-stdin takes the value as given: leave out --length/--alphabet")
        value = rotation.value_from_stdin() if values["value_from_stdin"] else None
        length = records.DEFAULT_LENGTH if length is None else length
        return cls(key, values["service"], length, alphabet or records.DEFAULT_ALPHABET, value,
                   values["create"], values["max_age"])  # fmt: skip

    def arguments(self) -> dict[str, Any]:
        return {"name": self.name, "services": self.services, "length": self.length,
                "alphabet": self.alphabet, "value_from_stdin": self._value is not None,
                "create": self.create, "max_age": self.max_age}  # fmt: skip

    def gather(self, ctx: HostContext) -> Facts:
        if self._value is not None:
            ctx.redactor.add_value(self._value)
        key = self.name
        with ctx.step("facts") as step:
            side = rotation.gather_env(ctx, [key], self.services, self.create)
            record = records.latest(rotation.read_records(ctx.remote, ctx.host), "env", key, side.file.path)
            last = f"last rotated {record.updated} ({record.status})" if record else "no rotation recorded"
            step.done(Status.OK, f"{key} in {side.label()}, used by {rotation.describe_services(side)}; "
                      f"{last}", env_file=side.file.path, services=side.services)  # fmt: skip
        unfinished = record is not None and record.unfinished
        return Facts(side, record, rotation.backup_value(side, record) if unfinished and record else None)

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        side, record, key = facts.side, facts.record, self.name
        if record is not None and record.unfinished:
            return self.resume(side, record, facts.backup)
        current = side.values[key]
        present = key in envfile.parse(side.file.text)
        fresh = not side.stale({key: current})
        if self._value is not None and present and current == self._value and fresh:
            return Plan.nothing(f"{key} already has the given value and "
                                f"{rotation.describe_services(side)} run(s) with it")  # fmt: skip
        if self._value is None and record is not None and records.recent_enough(record, self.max_age) \
                and fresh:  # fmt: skip
            return Plan.nothing(f"{key} was rotated {human_age(record.age())} ago (--max-age "
                                f"{human_age(self.max_age)}); nothing to do. --max-age 0 rotates it "
                                "now")  # fmt: skip
        summary = (f"rotate {key} in {side.label()} (backup first), recreate "
                   f"{rotation.describe_services(side)}, wait until healthy; roll back to the backup "
                   "if not")  # fmt: skip
        rotate = Change("rotate", summary, lambda c: self.run_fresh(c, side),
                        diff=rotation.masked_diff([side], [key]), own_steps=True)  # fmt: skip
        return Plan.of(rotate, check_step="decide")

    def resume(self, side: EnvSide, record: Record, old: dict[str, str] | None) -> Plan:
        """An interrupted rotation: finish it when the file has a new value, else start again."""
        key = self.name
        if old is None or old == side.values:

            def again(ctx: HostContext) -> None:
                rotation.save_record(ctx.remote, ctx.host, replace(record, status="abandoned",
                                     message="interrupted before the env file was written"))  # fmt: skip
                ctx.record("resume", Status.OK, f"unfinished rotation {record.id} had not written "
                           f"{side.file.path}: starting again")  # fmt: skip
                self.run_fresh(ctx, side)

            summary = f"abandon the unfinished rotation {record.id} (it changed nothing) and rotate anew"
            return Plan.of(Change("resume", summary, again, own_steps=True), check_step="decide")
        written = dict(old)

        def finish(ctx: HostContext) -> None:
            ctx.record("resume", Status.OK, f"rotation {record.id} was interrupted after writing "
                       f"{side.file.path}: finishing it")  # fmt: skip
            self.test_and_finish(ctx, side, record, {key: side.values[key]}, written)

        summary = (f"finish the interrupted rotation {record.id}: recreate "
                   f"{rotation.describe_services(side)} with the new {key}, or roll back to "
                   f"{record.backup}")  # fmt: skip
        return Plan.of(Change("resume", summary, finish, own_steps=True), check_step="decide")

    def run_fresh(self, ctx: HostContext, side: EnvSide) -> None:
        """create → set → test → finish."""
        key = self.name
        new = self._value if self._value is not None else rotation.generate(self.length, self.alphabet)
        ctx.redactor.add_value(new)
        old = dict(side.values)
        record = rotation.save_record(ctx.remote, ctx.host, rotation.new_record("env", key, self.task, side))
        rotation.write_env(side, {key: new}, record.backup)
        record = rotation.save_record(ctx.remote, ctx.host, replace(record, status="set"))
        self.test_and_finish(ctx, side, record, {key: new}, old)

    def test_and_finish(
        self, ctx: HostContext, side: EnvSide, record: Record, new: dict[str, str], old: dict[str, str]
    ) -> None:
        problem = rotation.recreate(side, new)
        if not problem:
            rotation.save_record(ctx.remote, ctx.host, replace(record, status="done", message="rotated"))
            ctx.record("finish", Status.CHANGED, f"rotated {self.name} in {side.label()}; "
                       f"{', '.join(side.services) or 'no service'} recreated, healthy, running with it"
                       f"{rotation.left_alone(side)}; {record.backup} rolls it back")  # fmt: skip
            return
        with ctx.step("rollback") as step:
            again = rotation.restore_env(side, record.backup, old)
            status = "rolled-back" if not again else "failed"
            rotation.save_record(ctx.remote, ctx.host, replace(record, status=status, message=problem))
            step.done(Status.FAILED, f"{problem}; {side.file.path} restored from {record.backup} and "
                      + ("the services are healthy with the old value again" if not again
                         else f"STILL not healthy: {again}"))  # fmt: skip
