"""rotate-db-password: a new password for a PostgreSQL role, and for the app that logs in with it.

The run's host is the database host; the env host(s) are opened from it (and locked). PostgreSQL is
reached with psycopg through the run's SSH connection (a direct-tcpip forward to
`postgres_tcp_host`:`postgres_port` as the host sees them, default 127.0.0.1:5432), as
`postgres_admin_user` (default postgres) with the password libpq finds: PGPASSWORD or a passfile
(`postgres_admin_passfile`, default ~/.pgpass). Logins are tested against `postgres_login_database`
(default postgres).

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

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError, UsageError
from remediations.core.inventory import Host, Inventory
from remediations.core.remediation import Remediation
from remediations.core.results import Status
from remediations.core.units import human_age
from remediations.secrets import rotation
from remediations.secrets.rotation import EnvSide, Record

if TYPE_CHECKING:
    import psycopg

KIND = "postgres"
AUTH_FAILED = ("28P01", "28000")


def check_role(role: str | None) -> str:
    if not role:
        raise UsageError("--role is required: the PostgreSQL login role whose password to rotate")
    return validate.check_role(role)


class Postgres:
    """psycopg connections to the run's database host, through an SSH forward."""

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        host = ctx.host
        self.tcp_host = str(validate.value(host, "postgres_tcp_host"))
        self.port = int(validate.value(host, "postgres_port"))
        self.admin_user = admin_user(host)
        self.passfile = ctx.var("postgres_admin_passfile")
        self.database = str(validate.value(host, "postgres_login_database"))
        self.sslmode = str(validate.value(host, "postgres_sslmode"))
        self.address: tuple[str, int] = (self.tcp_host, self.port)

    @contextmanager
    def reachable(self) -> Iterator[Postgres]:
        with self.ctx.remote.forward(self.tcp_host, self.port) as address:
            self.address = address
            yield self

    def _params(self) -> dict[str, Any]:
        host, port = self.address
        return {"host": host, "port": port, "dbname": self.database, "connect_timeout": 10,
                "sslmode": self.sslmode, "application_name": "remediations"}  # fmt: skip

    def admin(self) -> psycopg.Connection[Any]:
        import psycopg

        params = self._params()
        if self.passfile:
            params["passfile"] = str(self.passfile)
        try:
            return psycopg.connect(user=self.admin_user, autocommit=True, **params)
        except psycopg.Error as exc:
            raise HostError(
                f"cannot connect to PostgreSQL on {self.ctx.host.name} as {self.admin_user} "
                f"({self.tcp_host}:{self.port} on the host): {_first_line(exc)}. The admin password comes "
                "from PGPASSWORD or the postgres_admin_passfile var"
            ) from None

    def login(self, role: str, password: str) -> str:
        """ "" when `role` logs in with `password`; "refused" when the server says the password is
        wrong; otherwise what went wrong."""
        import psycopg

        try:
            with psycopg.connect(user=role, password=password, **self._params()) as conn:
                conn.execute("SELECT 1")
            return ""
        except psycopg.Error as exc:
            text = _first_line(exc)
            if getattr(exc, "sqlstate", None) in AUTH_FAILED or "password authentication failed" in text:
                return "refused"
            return text


def admin_user(host: Host) -> str:
    return str(validate.value(host, "postgres_admin_user"))


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def role_facts(conn: psycopg.Connection[Any], role: str) -> tuple[bool, bool] | None:
    """(can log in, is superuser) of the role; None when it does not exist."""
    row = conn.execute("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]))


def set_password(conn: psycopg.Connection[Any], role: str, password: str) -> None:
    """ALTER ROLE … PASSWORD with a SCRAM-SHA-256 verifier computed here by libpq."""
    from psycopg import sql

    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


class RotateDbPassword(Remediation):
    task: ClassVar[str] = "rotate-db-password"

    def __init__(
        self,
        role: str,
        env_host: str | None,
        env_key: str,
        services: Sequence[str] = (),
        length: int = rotation.DEFAULT_LENGTH,
        alphabet: str = rotation.DEFAULT_ALPHABET,
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

    def prepare(self, inventory: Inventory) -> None:
        self._env_hosts = rotation.env_hosts(inventory, self.env_host)

    def validate(self, host: Host) -> None:
        super().validate(host)
        if self.role == admin_user(host):
            raise UsageError(f"{host.source}: host {host.name}: --role {self.role} is postgres_admin_user, "
                             "the role this task connects as; rotate it by hand")  # fmt: skip

    def run(self, ctx: HostContext) -> None:
        with ExitStack() as stack:
            contexts = rotation.open_env_contexts(ctx, self._env_hosts, stack)
            sides = rotation.gather_sides(contexts, [self.env_key], self.services)
            old = rotation.agreed_values(sides)[self.env_key]
            records = rotation.latest_of(sides, KIND, self.role)
            db = Postgres(ctx)
            with db.reachable(), db.admin() as admin:
                self.rotate(ctx, admin, db, sides, records, old)

    def rotate(
        self,
        ctx: HostContext,
        admin: psycopg.Connection[Any],
        db: Postgres,
        sides: list[EnvSide],
        records: list[Record | None],
        current: str,
    ) -> None:
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

        unfinished = [r for r in records if r is not None and r.unfinished]
        if unfinished:
            self.resume(
                ctx, admin, db, sides, [r or unfinished[0] for r in records], unfinished[0], current, works
            )
            return
        if works:
            raise HostError(f"the password in {key} does not log in as {role} ({works}): the app and the "
                            "database disagree already; fix that first, nothing changed")  # fmt: skip
        done = [r for r in records if rotation.recent_enough(r, self.max_age)]
        if len(done) == len(sides) and not any(s.stale({key: current}) for s in sides):
            age = human_age(min(r.age() for r in done if r is not None))
            ctx.record("decide", Status.OK, f"{role}'s password was rotated {age} "
                       f"ago (--max-age {human_age(self.max_age)}); nothing to do. --max-age 0 "
                       "rotates it now")  # fmt: skip
            return
        where = "; ".join(f"{s.label()} (recreate {rotation.describe_services(s)})" for s in sides)
        if ctx.check:
            diff = "\n".join(f"{s.file.path}: {rotation.masked_change([key])}" for s in sides)
            ctx.record("decide", Status.CHANGED, f"would set a new password for role {role} (SCRAM "
                       f"verifier), write it to {key} in {where}, test logins, roll back if anything fails",
                       diff=diff)  # fmt: skip
            return

        new = rotation.generate(self.length, self.alphabet)
        ctx.redactor.add_value(new)
        detail = {"role": role, "db_host": ctx.host.name}
        saved = rotation.save_all(
            sides, [rotation.new_record(KIND, role, self.task, s, detail) for s in sides]
        )
        for side, record in zip(sides, saved, strict=True):
            rotation.write_env(side, {key: new}, record.backup, step=f"set {side.host.name}")
        self.switch(ctx, admin, db, sides, saved, new, current)

    def resume(
        self,
        ctx: HostContext,
        admin: psycopg.Connection[Any],
        db: Postgres,
        sides: list[EnvSide],
        records: list[Record],
        record: Record,
        current: str,
        works: str,
    ) -> None:
        """An interrupted rotation: the env file holds the new value (finish) or not (roll back)."""
        role, key = self.role, self.env_key
        old = rotation.backup_value(sides[0], record)
        if old is None or old[key] == current:
            # The env files were not written: the role may or may not have been changed after them.
            if ctx.check:
                ctx.record("decide", Status.CHANGED, f"would close the unfinished rotation {record.id} "
                           f"(env files unchanged) and make sure {role} has the password in "
                           f"{key}")  # fmt: skip
                return
            with ctx.step("resume") as step:
                if works:
                    set_password(admin, role, current)
                rotation.save_all(sides, records, status="abandoned",
                                  message="interrupted before the env file was written")  # fmt: skip
                step.done(Status.CHANGED if works else Status.OK,
                          f"unfinished rotation {record.id} had not written the env file; "
                          + (f"{role}'s password put back to the one in {key}" if works
                             else f"{role} still has the password in {key}")
                          + "; run again to rotate")  # fmt: skip
            return
        if ctx.check:
            ctx.record("decide", Status.CHANGED, f"would finish the interrupted rotation {record.id}: the "
                       f"env file holds the new password; set it on {role} if needed, recreate, "
                       "test")  # fmt: skip
            return
        ctx.record("resume", Status.OK, f"rotation {record.id} was interrupted after writing the env file: "
                   "finishing it")  # fmt: skip
        unwritten = [s for s in sides if s.values[key] != current]
        if unwritten:
            raise HostError(f"the env files disagree ({', '.join(s.host.name for s in unwritten)}); "
                            "fix them by hand from the backups")  # fmt: skip
        self.switch(ctx, admin, db, sides, records, current, old[key])

    def switch(
        self,
        ctx: HostContext,
        admin: psycopg.Connection[Any],
        db: Postgres,
        sides: list[EnvSide],
        records: list[Record],
        new: str,
        old: str,
    ) -> None:
        """The role gets `new` (unless it has it), a login tests it, the apps are recreated with it."""
        role, key = self.role, self.env_key
        problem = ""
        with ctx.step("switch") as step:
            if db.login(role, new):
                set_password(admin, role, new)
            problem = db.login(role, new)
            if problem:
                step.done(Status.FAILED, f"a login as {role} with the new password failed ({problem})")
            else:
                step.done(Status.CHANGED, f"role {role} has the new password (SCRAM verifier); a login "
                          "with it works")  # fmt: skip
        if not problem:
            records = rotation.save_all(sides, records, status="switched")
            for side in sides:
                problem = rotation.recreate(side, {key: new}, prefix=f"{side.host.name} ")
                if problem:
                    break
        if problem:
            self.roll_back(ctx, admin, db, sides, records, old, problem)
            return
        with ctx.step("finish") as step:
            refused = db.login(role, old)
            rotation.save_all(sides, records, status="done", message="rotated")
            apps = "; ".join(f"{', '.join(s.services)} on {s.host.name}" for s in sides)
            if refused != "refused":
                step.done(Status.FAILED, f"rotated, but a login with the OLD password was not refused "
                          f"({refused or 'it logged in'}): check pg_hba.conf for trust rules")  # fmt: skip
            else:
                step.done(Status.CHANGED, f"rotated {role}'s password; {apps} recreated, healthy, running "
                          f"with it; the old password is refused; backups: "
                          f"{', '.join(r.backup for r in records)}")  # fmt: skip

    def roll_back(
        self,
        ctx: HostContext,
        admin: psycopg.Connection[Any],
        db: Postgres,
        sides: list[EnvSide],
        records: list[Record],
        old: str,
        problem: str,
    ) -> None:
        role, key = self.role, self.env_key
        with ctx.step("rollback") as step:
            set_password(admin, role, old)
            works = db.login(role, old)
            still = [
                again
                for side, record in zip(sides, records, strict=True)
                if (
                    again := rotation.restore_env(
                        side, record.backup, {key: old}, prefix=f"{side.host.name} "
                    )
                )
            ]
            status = "failed" if still or works else "rolled-back"
            rotation.save_all(sides, records, status=status, message=problem)
            back = f"{role} has the old password again"
            back += f" but a login fails ({works})" if works else ""
            back += "; env files restored from their backups; "
            back += f"STILL unhealthy: {'; '.join(still)}" if still else "the apps are healthy with it"
            step.done(Status.FAILED, f"{problem}; rolled back: {back}")
