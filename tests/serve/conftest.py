"""The live server most HTTP tests talk to: the app over its own engine on a loopback port."""

from __future__ import annotations

import pytest
from processes import live_server

from dialogpt_onnx import runtime


@pytest.fixture(scope="module")
def server(exported):
    model = runtime.load(exported("int8"))
    with live_server(model, max_batch=4, max_queue=8) as (_, url):
        yield model, url

