"""The one command, dialogpt-onnx: each subcommand is its package's CLI; --version everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from checkpoints import ROOT

SCRIPT = Path(sys.executable).parent / "dialogpt-onnx"  # installed by pip install -e .


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_command_runs_each_cli(exported):
    d = exported("int8")
    gen = run("generate", d, "Hello", "--max-new-tokens", "6", "--seed", "1")
    same = subprocess.run([sys.executable, "-m", "runtime", "generate", str(d), "Hello", "--max-new-tokens", "6",
                           "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0 and gen.stdout == same.stdout, gen.stderr
    assert run("serve", "/nonexistent/dir").returncode == 2  # serve's own one-line refusal
    helped = run("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("export", "chat", "serve", "bench", "train"))


def test_version_and_bad_commands():
    from importlib.metadata import version

    want = f"dialogpt-onnx {version('dialogpt-onnx')}"
    assert run("--version").stdout.strip() == want
    for module in ("runtime", "serve", "export", "benchmarks", "training"):
        out = subprocess.run([sys.executable, "-m", module, "--version"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == want, (module, out.stderr)
    bad = run("bogus")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown command 'bogus'")
    assert run().returncode == 2


def test_every_cli_help_shows_examples_and_defaults():
    for module in ("runtime", "serve", "export", "benchmarks", "training"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "examples:\n  python -m " + module in out.stdout, (module, out.stdout[-500:])
    chat = subprocess.run([sys.executable, "-m", "runtime", "chat", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "(default: 64)" in chat.stdout  # --max-new-tokens
