"""How ``visfocus app`` is launched, decided without starting anything: the login (``--auth``), the warning when the
app is reachable beyond this machine without one, and the limits that keep an exposed app bounded (upload size, queue
length, sessions kept and how long, how long exports stay on disk). Pure: no Gradio, no model."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visfocus.errors import VisfocusError
from visfocus.values import parse_float, parse_int

PASSWORD_VARIABLE = "VISFOCUS_APP_PASSWORD"
LOCAL_NAMES = ("localhost",)
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_SESSIONS = 100
DEFAULT_SESSION_TTL_MIN = 60.0
DEFAULT_EXPORT_TTL_MIN = 30.0
CACHE_SWEEP_S = 60  # how often Gradio's cache of served files is swept for files older than the export TTL


def parse_auth(text: str | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``--auth USER:PASS`` → (user, password); ``--auth USER`` takes the password from the environment variable
    ``VISFOCUS_APP_PASSWORD`` (out of the process list and shell history); no ``--auth`` → None. A malformed value is
    one ``VisfocusError`` that never repeats the password."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not user.strip() or any(c.isspace() for c in user):
        raise VisfocusError("--auth needs a user name without spaces before the ':' (--auth USER:PASS, or --auth USER "
                            f"with the password in the environment variable {PASSWORD_VARIABLE})")
    if not sep:
        password = environ.get(PASSWORD_VARIABLE, "")
    if not password:
        where = "after the ':'" if sep else f"in the environment variable {PASSWORD_VARIABLE}"
        raise VisfocusError(f"--auth {user} has no password {where}: use --auth USER:PASS, or --auth USER with the "
                            f"password in the environment variable {PASSWORD_VARIABLE}")
    return user, password


def is_local(host: str) -> bool:
    """Whether ``host`` is this machine only: localhost or a loopback address (127.0.0.1, ::1, …)."""
    name = host.strip().strip("[]").lower()
    if name in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from elsewhere


def exposure_warning(host: str, port: int, share: bool, auth: tuple[str, str] | None) -> str | None:
    """The warning for an app others can reach without a login (``--share``, or ``--host`` beyond localhost), else
    None: who can reach it, and how to add a login."""
    if auth is not None:
        return None
    reach = []
    if share:
        reach.append("anyone who has its public gradio.live link (--share)")
    if not is_local(host):
        reach.append(f"anyone who can reach this machine on port {port} (--host {host})")
    if not reach:
        return None
    return (f"the app has no login and {' and '.join(reach)} can use it: run the model, upload images and read "
            f"the answers. Add a login with --auth USER:PASS (or --auth USER with the password in "
            f"{PASSWORD_VARIABLE}), or listen on --host 127.0.0.1 only")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything ``run`` passes to Gradio, decided up front."""

    host: str
    port: int
    share: bool
    auth: tuple[str, str] | None
    warning: str | None  # printed as "[visfocus] warning: ..." before the model loads
    max_upload_bytes: int
    max_queue: int
    max_sessions: int
    session_ttl_s: float
    export_ttl_s: float

    @property
    def local_only(self) -> bool:
        return is_local(self.host) and not self.share

    def delete_cache(self) -> tuple[int, int]:
        """``gr.Blocks(delete_cache=(every, age))``: Gradio's copies of uploads and exports older than the export TTL
        are deleted, the cache swept every minute."""
        return CACHE_SWEEP_S, max(1, int(self.export_ttl_s))

    def launch_kwargs(self) -> dict[str, Any]:
        """``demo.launch(**...)``. Internal error texts reach the browser only when the app is local-only (a
        ``gr.Error`` — every bad request — is always shown)."""
        return {"server_name": self.host, "server_port": self.port, "share": self.share, "auth": self.auth,
                "max_file_size": self.max_upload_bytes, "state_session_capacity": self.max_sessions,
                "show_error": self.local_only}


def plan_launch(args: Any, environ: Mapping[str, str]) -> LaunchPlan:
    """The launch plan of the parsed ``visfocus app`` flags; a bad flag is one ``VisfocusError``."""
    auth = parse_auth(args.auth, environ)
    upload_mb = parse_float(args.max_upload_mb, "--max_upload_mb", low=0.001)
    session_ttl = parse_float(args.session_ttl_min, "--session_ttl_min", low=0.1)
    export_ttl = parse_float(args.export_ttl_min, "--export_ttl_min", low=0.1)
    return LaunchPlan(host=args.host, port=args.port, share=bool(args.share), auth=auth,
                      warning=exposure_warning(args.host, args.port, bool(args.share), auth),
                      max_upload_bytes=int(upload_mb * 1024 * 1024),
                      max_queue=parse_int(args.max_queue, "--max_queue", low=1),
                      max_sessions=parse_int(args.max_sessions, "--max_sessions", low=1),
                      session_ttl_s=session_ttl * 60, export_ttl_s=export_ttl * 60)
