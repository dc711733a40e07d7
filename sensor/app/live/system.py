"""What live asks of the system: signals, the account it runs as, systemd's notify socket, the parent's death."""
from __future__ import annotations

import logging
import os
import pwd
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.errors import ConfigError
from sensor.paths import DEFAULT_USER

log = logging.getLogger("phi_sensor")


@dataclass
class Flags:
    """Set by signal handlers, acted on by the loop: handlers never do work themselves."""

    stop: bool = False
    reload: bool = False


def install_signal_handlers(flags: Flags) -> None:
    def on_stop(_signum: int, _frame: Any) -> None:
        flags.stop = True

    def on_reload(_signum: int, _frame: Any) -> None:
        flags.reload = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: READY=1, RELOADING=1, STOPPING=1, STATUS=..."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        log.debug("cannot notify systemd", exc_info=True)


def resolve_user(requested: str | None) -> pwd.struct_passwd | None:
    """The account to switch to, or None to stay as we are (not root, or no such default user)."""
    if os.geteuid() != 0:
        if requested:
            log.warning("--user %s ignored: not running as root", requested)
        return None
    name = requested or DEFAULT_USER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if requested:
            raise ConfigError("command line", "--user", f"no such user: {requested}") from None
        log.warning("running as root: create a %s user or pass --user so packets are never processed as root",
                    DEFAULT_USER)
        return None


def drop_privileges(account: pwd.struct_passwd) -> None:
    """Become `account` for good: no supplementary groups, no way back to root, no capabilities."""
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)


def prepare_stats_dir(path: Path, account: pwd.struct_passwd | None) -> None:
    """Create the stats file's directory, owned by the account the sensor will run as."""
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, mode=0o755)
            if account is not None:
                os.chown(path.parent, account.pw_uid, account.pw_gid)
    except OSError as exc:
        log.warning("%s: cannot create the stats directory: %s", path.parent, exc.strerror or exc)


def set_parent_death_signal() -> None:
    """A worker whose main process died (SIGKILL, OOM) stops instead of capturing for no one."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable", exc_info=True)
