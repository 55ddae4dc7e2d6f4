"""The chat page: one static file, served with a strict Content-Security-Policy (its own inline script and
style only, by hash; this origin only; never framed)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib.resources import files

CHAT_PAGE = files(__package__ or "dialogpt_onnx.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


def page_for(model_name: str) -> str:
    """The page with the model's public name in its data block."""
    return CHAT_PAGE.replace("{{MODEL}}", page_data(model_name))


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
