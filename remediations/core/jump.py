"""Jump hosts: the inventory's ProxyJump (or the ProxyCommand `ssh -W` form of it), and one from
~/.ssh/config, each opened as a connection checked as strictly as the target (`core.connection`
builds both; this module decides which jump host a target goes through).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from remediations.core.errors import HostUnreachable, UsageError
from remediations.core.inventory import Host, jump_host_parts

if TYPE_CHECKING:
    from fabric import Connection

# builds the connection to a host: (host, connect timeout, whether it is itself a jump host)
Build = Callable[[Host, float, bool], "Connection"]


def configured_jump(
    host: Host, conn: Connection, connect_timeout: float, via_jump: bool, build: Build
) -> None:
    """A ProxyJump from ~/.ssh/config: Fabric would open it trusting any host key (AutoAddPolicy),
    so it is replaced by a jump host checked like the inventory's."""
    spec = str(conn.ssh_config.get("proxyjump", "none"))
    if spec.lower() == "none":
        return
    where = f"~/.ssh/config: ProxyJump {spec} for {host.address}"
    try:
        hops = [jump_host_parts(hop.strip(), where)[1] for hop in spec.split(",")]
    except UsageError as exc:
        raise HostUnreachable(str(exc)) from None
    if via_jump:  # the jump host's own jump: unless it is itself (`Host *`), not supported
        if hops != [host.address]:
            raise HostUnreachable(f"{where}: a jump host behind a jump host is not supported")
        return
    if len(hops) > 1:
        raise HostUnreachable(f"{where}: several jump hosts; one jump host is supported")
    if hops[0] == host.address:  # `Host *` naming the jump host itself
        conn.gateway = None
        return
    conn.gateway = jump_connection(host, spec, connect_timeout, build)


def jump_connection(host: Host, spec: str, connect_timeout: float, build: Build) -> Connection:
    """The jump host named by ProxyJump ([user@]host[:port]), checked as strictly as the target:
    the same key file, the same known_hosts files and policy (the target's whole
    `ansible_ssh_common_args`, read without its jump)."""
    user, address, port = jump_host_parts(spec, f"{host.source}: host {host.name}")
    jump_vars: dict[str, object] = {
        k: v for k, v in host.vars.items()
        if k in ("ansible_private_key_file", "ansible_ssh_private_key_file", "ansible_ssh_common_args")
    }  # fmt: skip
    jump_vars.update(ansible_host=address, ansible_user=user or host.user)
    if port:
        jump_vars["ansible_port"] = port
    jump = Host(f"{host.name} (jump {address})", jump_vars, (), host.source)
    return build(jump, connect_timeout, True)
