"""The chat page: one static file, served with a strict Content-Security-Policy (its own inline script and
style only, by hash; this origin only; never framed). Its data block carries what the page cannot know:
the model's public name, its context and the server's defaults for every option."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib.resources import files

from dialogpt_onnx.runtime import DialogModel

from .openai_api import field_defaults

CHAT_PAGE = files(__package__ or "dialogpt_onnx.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


def page_for(model_name: str, model: DialogModel) -> str:
    """The page with its data block filled."""
    data = {"model": model_name, "context": model.max_length, "defaults": field_defaults(model)}
    return CHAT_PAGE.replace("{{PAGE}}", page_data(data))


def page_headers(page: str) -> dict[str, str]:
    """The page runs its own inline script and style only (by hash), talks to this origin only, and is never
    framed by another site."""
    def digest(kind: str) -> str:
        bodies = re.findall(rf"<{kind}>(.*?)</{kind}>", page, flags=re.S)  # no attributes: code, not data
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in bodies)

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


def page_data(value: object) -> str:
    """JSON for the page's data block: `<`, `>` and `&` escaped, so no value can close the block."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
