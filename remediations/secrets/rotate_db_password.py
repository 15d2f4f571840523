"""rotate-db-password: a new password for a PostgreSQL role, and for the app that logs in with it.

The run's host is the database host; the env host(s) are opened from it through the engine (and
locked). PostgreSQL is reached with psycopg through the run's SSH connection (`actions.pg_login`).

create  a new value (the `secrets` module);
set     the env file(s) (dated backup 0600, atomic write), then the role's password as a SCRAM
        verifier computed on the controller: the server, its log and pg_stat_activity never see the
        password itself;
test    a login with the new password; then every service that reads the env file recreated,
        healthy and running with it;
finish  a login with the old password is refused; the record says done.

Before the role is changed the old password keeps working; a failure at or after that step puts the
old password back on the role (a verifier of the value in the backup), restores the env file(s) and
recreates the services. An interrupted run is finished or rolled back by the next one, decided from
the facts: which password the role accepts and what the env file holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from remediations.actions import rotation
from remediations.actions.pg_login import Postgres, admin_user, role_facts, set_password
from remediations.actions.rotation import EnvSide
from remediations.core import validate
from remediations.core.args import Arg, args
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.plan import Change, Plan
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age
from remediations.facts import rotation as records
from remediations.facts.rotation import Record

if TYPE_CHECKING:
    import psycopg

KIND = "postgres"


def check_role(role: str | None) -> str:
    if not role:
        raise UsageError("--role is required: the PostgreSQL login role whose password to rotate")
    return validate.check_role(role)


def _role(value: Any, flag: str) -> str:
    return check_role(value)


@dataclass
class Facts:
    sides: list[EnvSide]
    records: list[Record | None]  # the newest record of the role on each env host
    current: str  # the password the env files hold
    works: str  # "" when it logs in as the role, else why not
    db: Postgres
    admin: psycopg.Connection[Any]


class RotateDbPassword(Remediation):
    """Rotate a PostgreSQL role's password and the app's env file; roll both back if the app fails.

    Example: inv rotate-db-password --host db1 --role shop_app --env-host api1 --service api
    --host is the database host, reached with psycopg through the SSH connection. The password is set
    as a SCRAM verifier computed here (the server never sees it), tested with a login, written to
    the env file(s) (backup 0600), the services recreated; afterwards the old password is refused.
    """

    task: ClassVar[str] = "rotate-db-password"
    params = args(
        Arg("role", "the PostgreSQL login role whose password to rotate", parse=_role, required=True),
        Arg("env_host", "host(s) whose compose env file holds the password (host, group or comma list)"),
        Arg("env_key", "the env file variable that holds it (default DATABASE_PASSWORD)",
            parse=records.key_arg, default="DATABASE_PASSWORD"),
        records.READERS,
        records.LENGTH,
        records.ALPHABET,
        records.MAX_AGE,
    )  # fmt: skip

    def __init__(
        self,
        role: str,
        env_host: str | None,
        env_key: str,
        services: Sequence[str] = (),
        length: int = records.DEFAULT_LENGTH,
        alphabet: str = records.DEFAULT_ALPHABET,
        max_age: int = 3600,
    ) -> None:
        self.role = role
        self.env_host = env_host
        self.env_key = env_key
        self.services = validate.check_services(services)
        self.length = length
        self.alphabet = alphabet
        self.max_age = max_age
        self._env_hosts: list[Host] = []

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RotateDbPassword:
        length, alphabet = values["length"], values["alphabet"]
        return cls(values["role"], values["env_host"], values["env_key"], values["service"],
                   records.DEFAULT_LENGTH if length is None else length, alphabet or records.DEFAULT_ALPHABET,
                   values["max_age"])  # fmt: skip

    def prepare(self, inventory: Inventory) -> None:
        self._env_hosts = rotation.env_hosts(inventory, self.env_host)

    def validate(self, host: Host) -> None:
        super().validate(host)
        if self.role == admin_user(host):
            raise UsageError(f"{host.source}: host {host.name}: --role {self.role} is postgres_admin_user, "
                             "the role this task connects as; rotate it by hand")  # fmt: skip

    def run(self, ctx: HostContext) -> None:
        """The env hosts and the database stay open from the facts to the end of the plan."""
        with ExitStack() as stack:
            contexts = rotation.open_env_contexts(ctx, self._env_hosts, stack)
            sides = rotation.gather_sides(contexts, [self.env_key], self.services)
            current = rotation.agreed_values(sides)[self.env_key]
            found = rotation.latest_of(sides, KIND, self.role)
            db = Postgres(ctx)
            stack.enter_context(db.reachable())
            admin = stack.enter_context(db.admin())
            works = self.db_facts(ctx, admin, db, current)
            ctx.carry_out(self.decide(ctx, Facts(sides, found, current, works, db, admin)))

    def db_facts(self, ctx: HostContext, admin: psycopg.Connection[Any], db: Postgres, current: str) -> str:
        """The role exists, can log in and is not the admin; whether the env files' password logs in."""
        role, key = self.role, self.env_key
        with ctx.step("facts db") as step:
            facts = role_facts(admin, role)
            if facts is None:
                raise HostError(f"role {role!r} does not exist on {ctx.host.name}; nothing changed")
            if not facts[0]:
                raise HostError(f"role {role!r} cannot log in (NOLOGIN); nothing changed")
            if role == db.admin_user:
                raise HostError(f"{role} is the admin role this task connects as; rotate it by hand")
            works = db.login(role, current)
            step.done(Status.OK, f"role {role} exists; the password in {key} "
                      + ("logs in" if not works else f"does not log in ({works})"))  # fmt: skip
        return works

    def decide(self, ctx: HostContext, facts: Facts) -> Plan:
        role, key, sides = self.role, self.env_key, facts.sides
        unfinished = [r for r in facts.records if r is not None and r.unfinished]
        if unfinished:
            return self.resume(facts, [r or unfinished[0] for r in facts.records], unfinished[0])
        if facts.works:
            raise HostError(f"the password in {key} does not log in as {role} ({facts.works}): the app and "
                            "the database disagree already; fix that first, nothing changed")  # fmt: skip
        done = [r for r in facts.records if r is not None and records.recent_enough(r, self.max_age)]
        if len(done) == len(sides) and not any(s.stale({key: facts.current}) for s in sides):
            age = human_age(min(r.age() for r in done))
            limit = human_age(self.max_age)
            return Plan.nothing(f"{role}'s password was rotated {age} ago (--max-age {limit}); nothing to "
                                "do. --max-age 0 rotates it now")  # fmt: skip
        summary = (f"set a new password for role {role} (SCRAM verifier), write it to {key} in "
                   f"{rotation.describe_sides(sides)}, test logins, roll back if anything fails")  # fmt: skip
        rotate = Change("rotate", summary, lambda c: self.rotate(c, facts),
                        diff=rotation.masked_diff(sides, [key]), own_steps=True)  # fmt: skip
        return Plan.of(rotate, check_step="decide")

    def rotate(self, ctx: HostContext, facts: Facts) -> None:
        """create → set (the env files, then the role) → test → finish."""
        new = rotation.generate(self.length, self.alphabet)
        ctx.redactor.add_value(new)
        detail = {"role": self.role, "db_host": ctx.host.name}
        fresh = [rotation.new_record(KIND, self.role, self.task, s, detail) for s in facts.sides]
        saved = rotation.save_all(facts.sides, fresh)
        rotation.write_all(facts.sides, saved, {self.env_key: new})
        self.switch(ctx, facts, saved, new, facts.current)

    def resume(self, facts: Facts, found: list[Record], record: Record) -> Plan:
        """An interrupted rotation: the env file holds the new value (finish) or not (roll back)."""
        role, key, current = self.role, self.env_key, facts.current
        old = rotation.backup_value(facts.sides[0], record)
        if old is None or old[key] == current:
            # The env files were not written: the role may or may not have been changed after them.
            summary = (f"close the unfinished rotation {record.id} (env files unchanged) and make sure "
                       f"{role} has the password in {key}")  # fmt: skip
            return Plan.of(Change("resume", summary, lambda c: self.abandon(c, facts, found, record),
                                  own_steps=True), check_step="decide")  # fmt: skip
        previous = old[key]

        def finish(ctx: HostContext) -> None:
            ctx.record("resume", Status.OK, f"rotation {record.id} was interrupted after writing the env "
                       "file: finishing it")  # fmt: skip
            unwritten = [s for s in facts.sides if s.values[key] != current]
            if unwritten:
                raise HostError(f"the env files disagree ({', '.join(s.host.name for s in unwritten)}); "
                                "fix them by hand from the backups")  # fmt: skip
            self.switch(ctx, facts, found, current, previous)

        summary = (f"finish the interrupted rotation {record.id}: the env file holds the new password; set "
                   f"it on {role} if needed, recreate, test")  # fmt: skip
        return Plan.of(Change("resume", summary, finish, own_steps=True), check_step="decide")

    def abandon(self, ctx: HostContext, facts: Facts, found: list[Record], record: Record) -> None:
        """Close a rotation that had not written the env files; the role gets their password back."""
        role, key = self.role, self.env_key
        with ctx.step("resume") as step:
            if facts.works:
                set_password(facts.admin, role, facts.current)
            rotation.save_all(facts.sides, found, status="abandoned",
                              message="interrupted before the env file was written")  # fmt: skip
            step.done(Status.CHANGED if facts.works else Status.OK,
                      f"unfinished rotation {record.id} had not written the env file; "
                      + (f"{role}'s password put back to the one in {key}" if facts.works
                         else f"{role} still has the password in {key}")
                      + "; run again to rotate")  # fmt: skip

    def switch(self, ctx: HostContext, facts: Facts, found: list[Record], new: str, old: str) -> None:
        """The role gets `new` (unless it has it), a login tests it, the apps are recreated with it."""
        role, db = self.role, facts.db
        with ctx.step("switch") as step:
            if db.login(role, new):
                set_password(facts.admin, role, new)
            problem = db.login(role, new)
            if problem:
                step.done(Status.FAILED, f"a login as {role} with the new password failed ({problem})")
            else:
                step.done(Status.CHANGED, f"role {role} has the new password (SCRAM verifier); a login "
                          "with it works")  # fmt: skip
        if not problem:
            found = rotation.save_all(facts.sides, found, status="switched")
            problem = rotation.recreate_all(facts.sides, {self.env_key: new})
        if problem:
            self.roll_back(ctx, facts, found, old, problem)
            return
        self.finish(ctx, facts, found, old)

    def finish(self, ctx: HostContext, facts: Facts, found: list[Record], old: str) -> None:
        """A login with the old password is refused: the rotation is done."""
        role = self.role
        with ctx.step("finish") as step:
            refused = facts.db.login(role, old)
            rotation.save_all(facts.sides, found, status="done", message="rotated")
            if refused != "refused":
                step.done(Status.FAILED, f"rotated, but a login with the OLD password was not refused "
                          f"({refused or 'it logged in'}): check pg_hba.conf for trust rules")  # fmt: skip
            else:
                step.done(Status.CHANGED, f"rotated {role}'s password; {rotation.apps(facts.sides)} "
                          f"recreated, healthy, running with it; the old password is refused; backups: "
                          f"{', '.join(r.backup for r in found)}")  # fmt: skip

    def roll_back(self, ctx: HostContext, facts: Facts, found: list[Record], old: str, problem: str) -> None:
        role = self.role
        with ctx.step("rollback") as step:
            set_password(facts.admin, role, old)
            works = facts.db.login(role, old)
            still = rotation.restore_all(facts.sides, found, {self.env_key: old})
            status = "failed" if still or works else "rolled-back"
            rotation.save_all(facts.sides, found, status=status, message=problem)
            back = f"{role} has the old password again"
            back += f" but a login fails ({works})" if works else ""
            back += "; env files restored from their backups; "
            back += f"STILL unhealthy: {'; '.join(still)}" if still else "the apps are healthy with it"
            step.done(Status.FAILED, f"{problem}; rolled back: {back}")
