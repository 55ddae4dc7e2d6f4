"""Every code block of README.md and docs/*.md runs as written, so an example can never rot.

The blocks of all documents run in order in one temporary dir, as a user pasting them would after the
quick start: `models/` holds the bundled checkpoints (linked) and `models/chat-8x256-int8` (exported as
`quickstart.sh` does), `data/` is linked, and `dialogpt-onnx` / `python` are this environment's. A ```bash
block runs under `bash -euo pipefail`, a ```python block as a script of its own; each must exit 0. The one
change made to a block: port 8000 becomes a free port, so a busy 8000 cannot fail the test. A block that
needs what a test run cannot have says so in a `<!-- doc-test: skip REASON -->` line above it; it is
reported as skipped with that reason. Blocks in other languages (```text, ```json) are not examples.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dialogpt_onnx.export import ExportOptions, export_model

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!-- doc-test: skip (.+?) -->\s*$")
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    found: list[Block] = []
    lines = document.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{document.name}:{i + 1}: a code block is never closed"
        language = m.group(1)
        if language in RUNNABLE:
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            skip = SKIP.match(above)
            found.append(Block(document, i + 1, RUNNABLE[language], "\n".join(lines[i + 1:end]) + "\n",
                               skip.group(1) if skip else None))
        elif not language:
            raise AssertionError(f"{document.name}:{i + 1}: a code block without a language: mark examples "
                                 "bash or python, anything else text")
        i = end + 1
    return found


ALL = [b for d in DOCUMENTS for b in blocks(d)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """What a user has after the quick start, in a dir of its own."""
    work = tmp_path_factory.mktemp("docs")
    (work / "models").mkdir()
    for name in ("chat-8x256", "chat-8x256-backward"):
        (work / "models" / name).symlink_to(ROOT / "models" / name)
    (work / "data").symlink_to(ROOT / "data")
    export_model(ROOT / "models" / "chat-8x256", work / "models" / "chat-8x256-int8",
                 ExportOptions(variant="int8", progress=False))
    return work


def test_every_document_has_examples_and_every_skip_a_reason() -> None:
    assert DOCUMENTS[0].name == "README.md" and len(DOCUMENTS) > 1
    readme = [b for b in ALL if b.document.name == "README.md"]
    assert sum(b.skip is None for b in readme) >= 8, "the README's examples are gone"
    assert all(b.skip is None or len(b.skip) > 20 for b in ALL), "a skip must say why"


@pytest.mark.parametrize("block", ALL, ids=lambda b: b.name)
def test_block_runs_as_written(block: Block, workspace: Path) -> None:
    if block.skip:
        pytest.skip(block.skip)
    code = block.code.replace("8000", str(free_port()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    if block.language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        script = workspace / f"block_{block.line}.py"
        script.write_text(code, encoding="utf-8")
        command = [sys.executable, str(script)]
    try:
        proc = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{block.name} ran over {TIMEOUT_S} s; output so far:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"{block.name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_every_relative_link_resolves() -> None:
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#\s]+)", document.read_text(encoding="utf-8")):
            if not re.match(r"\w+://", target):
                assert (document.parent / target).exists(), f"{document.name} links to {target}, which is missing"


def test_examples_write_only_into_ignored_dirs(workspace: Path) -> None:
    """After the examples (run above, in file order), the user's checkout holds nothing new but git-ignored
    dirs: no snippet leaves a file in the repository root."""
    ignored = {line.strip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.endswith("/")}
    left = {p.name for p in workspace.iterdir()} - {"models", "data"}
    left = {n for n in left if not re.fullmatch(r"block_\d+\.py", n)}  # this test's own scripts
    assert left <= ignored, f"examples left {sorted(left - ignored)} in the checkout: write into out/ instead"
