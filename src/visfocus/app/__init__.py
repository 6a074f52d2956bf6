"""``visfocus app``: compare methods on one image and see where the model looks, in the browser (Gradio).

Built on the public API and trace arrays only: ``compute`` answers and caches, ``views`` are the pure pieces of
every view, ``render`` draws them, ``ui`` lays out the page; ``params`` reads every request's parameters (typed,
bounded, profiles by name), ``launch`` decides the login, the exposure warning and the limits, ``exports`` keeps the
exports folder bounded. Gradio is an optional extra (``pip install -e ".[app]"``).
"""

from __future__ import annotations

import argparse
import os
import sys

from visfocus.app.launch import (
    DEFAULT_EXPORT_TTL_MIN,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_SESSION_TTL_MIN,
    PASSWORD_VARIABLE,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="Hub id or local path (default: the built-in model organism)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data_root", help="folder with VSR / WhatsUp / POPE files: their records become examples")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 lets anyone who can "
                             "reach the machine in: add --auth)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also a public Gradio link (anyone with it: add --auth)")
    parser.add_argument("--auth", metavar="USER[:PASS]",
                        help=f"require a login: USER:PASS, or USER with the password in the environment variable "
                             f"{PASSWORD_VARIABLE} (keeps it out of the process list and shell history)")
    parser.add_argument("--profiles", metavar="DIR",
                        help="folder of VEA layer profiles (`visfocus profile-layers` JSON files): the page offers "
                             "DIR/*.json by name; without it VEA takes no profile")
    parser.add_argument("--max_results", type=int, default=64, help="results kept in memory (LRU)")
    parser.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest upload, in MB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--max_queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"requests waiting for the model at most; more are turned away with 'queue full' "
                             f"(default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--max_sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                        help=f"browser sessions whose results are kept; the least recent beyond it are dropped "
                             f"(default {DEFAULT_MAX_SESSIONS})")
    parser.add_argument("--session_ttl_min", type=float, default=DEFAULT_SESSION_TTL_MIN,
                        help=f"minutes a session's results are kept after its last comparison "
                             f"(default {DEFAULT_SESSION_TTL_MIN:g})")
    parser.add_argument("--export_ttl_min", type=float, default=DEFAULT_EXPORT_TTL_MIN,
                        help=f"minutes an export (and Gradio's copy of an upload) stays on disk "
                             f"(default {DEFAULT_EXPORT_TTL_MIN:g})")


def run(args: argparse.Namespace) -> int:
    from visfocus.app.launch import plan_launch
    from visfocus.app.params import ProfileFolder

    plan = plan_launch(args, os.environ)  # a bad flag stops here, before the model loads
    profiles = ProfileFolder.open(args.profiles) if args.profiles else None
    if plan.warning:
        print(f"[visfocus] warning: {plan.warning}", file=sys.stderr)
    if profiles is not None and not profiles.names():
        print(f"[visfocus] warning: --profiles {args.profiles} holds no *.json layer profiles", file=sys.stderr)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        from visfocus.errors import VisfocusError

        raise VisfocusError('the app needs Gradio: pip install -e ".[app]"') from None
    from visfocus.api import load_model
    from visfocus.app.compute import Explorer, examples
    from visfocus.app.exports import ExportFolder
    from visfocus.app.ui import build

    vlm = load_model(args.model, {"dtype": args.dtype, "device": args.device})  # None: the organism, announced
    explorer = Explorer(vlm, max_results=args.max_results, profiles=profiles)
    demo = build(explorer, examples(args.data_root), exports=ExportFolder(plan.export_ttl_s),
                 session_ttl_s=plan.session_ttl_s, delete_cache=plan.delete_cache())
    demo.queue(max_size=plan.max_queue).launch(**plan.launch_kwargs())
    return 0
