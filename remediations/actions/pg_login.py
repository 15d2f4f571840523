"""psycopg connections to a database host through its SSH connection (a direct-tcpip forward to
`postgres_tcp_host`:`postgres_port` as the host sees them, default 127.0.0.1:5432): as
`postgres_admin_user` (default postgres) with the password libpq finds (PGPASSWORD or a passfile,
`postgres_admin_passfile`, default ~/.pgpass), and as a role with a given password, against
`postgres_login_database` (default postgres). Used by rotate-db-password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from remediations.core import validate
from remediations.core.context import HostContext
from remediations.core.errors import HostError
from remediations.core.inventory import Host

if TYPE_CHECKING:
    import psycopg

AUTH_FAILED = ("28P01", "28000")


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
