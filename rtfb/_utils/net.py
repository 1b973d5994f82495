"""Network checks shared by the TCP receiver, the feedback publisher and the command line."""

from __future__ import annotations

import errno
import ipaddress
import socket

from ..exceptions import UsageError

__all__ = ["check_port_free", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, ``localhost`` or ``[::1]``) is a loopback address."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', '', an interface name or a host name
        return False


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise :class:`~rtfb.exceptions.UsageError` if ``host:port`` cannot be bound.

    Binds (with ``SO_REUSEADDR``, as the real servers do) and closes a test socket, so a
    port held by another program is reported before a session starts instead of midway.

    Parameters
    ----------
    host : str
        Interface (``*`` or ``""``: every interface).
    port : int
        TCP port; 0 is always free.
    what : str
        What the port is for, e.g. ``"--tcp 5600"``, for the message.
    """
    if port == 0:
        return
    host = host.strip("[]")
    bind_host = "" if host in ("*", "") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind_host, port))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UsageError(f"{what}: port {port} on {host or '*'} is already in use by "
                             f"another program (another session? a stale display or "
                             f"sender?); stop it or choose another port.") from None
        raise UsageError(f"{what}: cannot bind {host or '*'}:{port}: "
                         f"{err.strerror or err}.") from None
