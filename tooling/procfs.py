"""Read-only process queries through Linux ``/proc``: liveness, tags, sockets.

Everything here identifies processes by PID and by what they carry (an
environment tag, a listening socket), never by name, so a test or a launcher
can find exactly the processes it started - including ones Flower detached
into their own sessions - and nothing else on a shared machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")

#: Environment variable that marks every process started by one launcher.
TAG_ENV = "TRACEFL_LOCAL_SUPERLINK_TAG"

#: ``st`` value of a listening TCP socket in ``/proc/net/tcp{,6}``.
_TCP_LISTEN = "0A"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # Field 3, after the parenthesised command name, is the state.
        stat = (PROC / str(pid) / "stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def parent_pid(pid: int) -> int | None:
    """Parent PID of ``pid`` (``None`` when it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _pids() -> Iterator[int]:
    if not PROC.is_dir():
        return
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def tagged_pids(tag: str, env_name: str = TAG_ENV) -> list[int]:
    """PIDs of live processes whose environment holds ``env_name=tag``.

    The calling process is never listed. Processes whose environment cannot be
    read (another user's) are skipped.
    """
    marker = f"{env_name}={tag}".encode()
    found: list[int] = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = (PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and pid_alive(pid):
            found.append(pid)
    return sorted(found)


def descendants(root: int) -> list[int]:
    """Live PIDs below ``root`` in the process tree (not ``root`` itself).

    Processes that were reparented away from ``root`` (e.g. a daemon whose
    parent exited) are not below it any more; use :func:`tagged_pids` for them.
    """
    children: dict[int, list[int]] = {}
    for pid in _pids():
        ppid = parent_pid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return sorted(pid for pid in found if pid_alive(pid))


@dataclass(frozen=True)
class ListeningSocket:
    """A TCP socket in LISTEN state, owned by ``pid``."""

    pid: int
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether the socket accepts connections from this host only.

        An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``, how Ray's gRPC
        servers show up) counts by its IPv4 address.
        """
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = PROC / str(pid) / "fd"
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for entry in entries:
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _decode_address(hex_addr: str) -> str:
    """``/proc/net/tcp`` addresses are the raw in(6)_addr in host byte order words."""
    raw = bytes.fromhex(hex_addr)
    # Each 32-bit word is printed as a little-endian integer on x86/arm64.
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    return str(ipaddress.ip_address(b"".join(words)))


def _listening_by_inode() -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            addr_hex, port_hex = fields[1].split(":")
            found[int(fields[9])] = (_decode_address(addr_hex), int(port_hex, 16))
    return found


def listening_sockets(pids: Iterable[int]) -> list[ListeningSocket]:
    """TCP sockets in LISTEN state held by any of ``pids`` (IPv4 and IPv6)."""
    table = _listening_by_inode()
    found: set[ListeningSocket] = set()
    for pid in pids:
        for inode in _socket_inodes(pid):
            if inode in table:
                address, port = table[inode]
                found.add(ListeningSocket(pid, address, port))
    return sorted(found, key=lambda s: (s.pid, s.port, s.address))


def pids_listening_on(port: int) -> list[int]:
    """PIDs holding a listening TCP socket on ``port`` (any address)."""
    return sorted(
        {sock.pid for sock in listening_sockets(_pids()) if sock.port == port}
    )


@dataclass
class Observation:
    """What :func:`observe` saw: every tagged PID and every socket they listened on."""

    pids: set[int] = field(default_factory=set)
    sockets: set[ListeningSocket] = field(default_factory=set)
    commands: dict[int, str] = field(default_factory=dict)

    def not_loopback(self) -> list[str]:
        """Listening sockets reachable from other hosts, described for a message."""
        return [
            f"pid {s.pid} ({self.commands.get(s.pid, '?')}) on {s.address}:{s.port}"
            for s in sorted(self.sockets, key=lambda s: (s.pid, s.port))
            if not s.loopback
        ]


def command_line(pid: int) -> str:
    """``/proc/<pid>/cmdline`` as one string ('' when gone)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def observe(
    tag: str,
    until: Callable[[], bool],
    poll: float = 0.5,
    into: Observation | None = None,
) -> Observation:
    """Record tagged processes and their listening sockets until ``until()`` is true.

    Command lines are (re)read at every poll, so a process seen between
    ``fork`` and ``exec`` ends up under its final command.
    """
    seen = into if into is not None else Observation()
    while True:
        pids = tagged_pids(tag)
        seen.pids.update(pids)
        for pid in pids:
            seen.commands[pid] = command_line(pid) or seen.commands.get(pid, "")
        seen.sockets.update(listening_sockets(pids))
        if until():
            return seen
        time.sleep(poll)
