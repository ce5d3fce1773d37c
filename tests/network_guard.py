"""Run a Python command under a socket guard that records (and blocks) non-loopback traffic.

    python tests/network_guard.py LOG -m kedro run --env=debug
    python tests/network_guard.py LOG -c "import socket; socket.getaddrinfo('example.org', 443)"

An audit hook (``sys.addaudithook``, installed before anything else is imported) sees every
name lookup and connection of the process, in every thread. Each one that leaves the machine is
appended to ``LOG`` as a JSON line ``{"event", "address", "culprit", "stack"}`` and refused
with ``OSError``, so nothing is actually sent. Loopback addresses, ``localhost`` and Unix
sockets are allowed. Not a pytest module: the tests start it as a subprocess.
"""

from __future__ import annotations

import ipaddress
import json
import runpy
import socket
import sys
import threading
import traceback

LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"}
CONNECTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost"}
# Frames of the network plumbing itself: the culprit is the first frame outside them.
PLUMBING = ("/socket.py", "/ssl.py", "/http/client.py", "/urllib3/", "/requests/", __file__)

_busy = threading.local()


def _is_local_host(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0].lower()
    if host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name to resolve: it would go to a DNS server
    return address.is_loopback or address.is_unspecified


def _remote_address(event: str, args: tuple) -> str | None:
    """``host:port`` when the event reaches beyond the machine, else None."""
    if event in LOOKUPS:
        host = args[0]
        port = args[1] if event == "socket.getaddrinfo" else None
        return None if _is_local_host(host) else f"{host}:{port}"
    sock, address = args[0], args[-1]
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return None  # Unix sockets, netlink, ...
    if not isinstance(address, tuple) or not address:
        return None
    return None if _is_local_host(address[0]) else f"{address[0]}:{address[1]}"


def _culprit(stack: list[traceback.FrameSummary]) -> str:
    for frame in reversed(stack):
        if not any(part in frame.filename for part in PLUMBING):
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "unknown"


def install(log_path: str) -> None:
    """Record and refuse every non-loopback lookup or connection from now on."""

    def hook(event: str, args: tuple) -> None:
        if (event not in LOOKUPS and event not in CONNECTS) or getattr(_busy, "on", False):
            return
        address = _remote_address(event, args)
        if address is None:
            return
        _busy.on = True  # the hook's own file writes raise audit events too
        try:
            stack = traceback.extract_stack()[:-1]
            record = {
                "event": event,
                "address": address,
                "culprit": _culprit(stack),
                "stack": [f"{f.filename}:{f.lineno}" for f in stack[-15:]],
            }
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        finally:
            _busy.on = False
        raise OSError(f"network guard: {event} to {address} refused")

    sys.addaudithook(hook)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        raise SystemExit("usage: network_guard.py LOG (-m MODULE | -c CODE) [ARGS...]")
    log_path, mode, target, rest = argv[0], argv[1], argv[2], argv[3:]
    install(log_path)
    if mode == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(target, "<guarded>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
