"""``visfocus app``: compare methods on one image and see where the model looks, in the browser (Gradio).

Built on the public API and trace arrays only: ``compute`` answers and caches, ``views`` are the pure pieces of
every view, ``render`` draws them, ``ui`` lays out the page. Gradio is an optional extra (``pip install -e ".[app]"``).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="Hub id or local path (default: the built-in model organism)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data_root", help="folder with VSR / WhatsUp / POPE files: their records become examples")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also a public Gradio link")
    parser.add_argument("--max_results", type=int, default=64, help="results kept in memory (LRU)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        from visfocus.errors import VisfocusError

        raise VisfocusError('the app needs Gradio: pip install -e ".[app]"') from None
    from visfocus.api import load
    from visfocus.app.compute import Explorer, examples
    from visfocus.app.ui import build
    from visfocus.organism import NOTE, organism_path

    if args.model is None:
        print(f"[visfocus] {NOTE}", file=sys.stderr)
    vlm = load(str(organism_path()) if args.model is None else args.model, dtype=args.dtype, device=args.device)
    demo = build(Explorer(vlm, max_results=args.max_results), examples(args.data_root))
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0
