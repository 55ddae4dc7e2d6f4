"""CLI: dialogpt-onnx web MODEL_DIR OUT_DIR [--onnxruntime-web DIR] [--overwrite]

A static site that chats with the export in the browser, the model running in the page (onnxruntime-web's
WebAssembly build; nothing is sent anywhere). Serve OUT_DIR with any static file server.
"""

from __future__ import annotations

import argparse
import sys

from dialogpt_onnx.runtime.cli import OneLineParser, run_command

from .site import ORT_WEB_VERSION, make_site


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="dialogpt-onnx web", description=__doc__, examples=(
        "dialogpt-onnx export models/chat-8x256 out/chat-web --variant int8 --graph portable",
        "dialogpt-onnx web out/chat-web out/site && python -m http.server -d out/site 8080"))
    p.add_argument("model_dir", help="an exported model dir (the portable int8 graph runs fastest in wasm)")
    p.add_argument("out_dir", help="the site's dir (new, or one this command wrote, with --overwrite)")
    p.add_argument("--onnxruntime-web", help=f"a dir where `npm install onnxruntime-web` ran (default: npm installs "
                                             f"onnxruntime-web {ORT_WEB_VERSION} into ~/.cache/dialogpt-onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace a site this command wrote")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)

    def run() -> None:
        out = make_site(a.model_dir, a.out_dir, a.onnxruntime_web, a.overwrite)
        print(f"wrote {out}: serve it with `python -m http.server -d {out} 8080` and open http://127.0.0.1:8080")

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
