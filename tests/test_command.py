"""The one command, dialogpt-onnx: each subcommand's CLI through one runner (the same exit codes everywhere),
--version and examples in every --help, a missing extra named in one line, and a wheel that installs one
top-level name."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from checkpoints import ROOT

SCRIPT = Path(sys.executable).parent / "dialogpt-onnx"  # installed by pip install -e .
COMMANDS = ("export", "chat", "generate", "serve", "train", "evaluate", "bench")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_command_runs_each_cli(exported):
    d = exported("int8")
    gen = run("generate", d, "Hello", "--max-new-tokens", "6", "--seed", "1")
    for module in (["dialogpt_onnx.runtime"], ["dialogpt_onnx"]):  # python -m works too, the same reply
        same = subprocess.run([sys.executable, "-m", *module, "generate", str(d), "Hello", "--max-new-tokens", "6",
                               "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert gen.returncode == 0 and gen.stdout == same.stdout, (module, gen.stderr, same.stderr)
    assert run("serve", "/nonexistent/dir").returncode == 2  # serve's own one-line refusal
    helped = run("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in COMMANDS)


def test_version_and_bad_commands():
    from importlib.metadata import version

    want = f"dialogpt-onnx {version('dialogpt-onnx')}"
    assert run("--version").stdout.strip() == want
    for command in COMMANDS:
        out = run(command, "--version")
        assert out.returncode == 0 and out.stdout.strip() == want, (command, out.stderr)
    bad = run("bogus")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown command 'bogus'")
    assert "did you mean" not in bad.stderr  # nothing is close to it
    assert "did you mean chat?" in run("chta", "x").stderr
    assert run().returncode == 2


@pytest.mark.parametrize(("argv", "hint"), [
    (("generate", "m", "hi", "--tmperature", "1"), "(did you mean --temperature?) (see dialogpt-onnx generate --help)"),
    (("chat", "m", "--sed", "1", "--max-new-tokns", "2"), "(did you mean --seed for --sed, --max-new-tokens for "
                                                          "--max-new-tokns?)"),
    (("serve", "m", "--prot", "3"), "(did you mean --port?) (see dialogpt-onnx serve --help)"),
    (("export", "a", "b", "--varient", "int4"), "(did you mean --variant?)")])
def test_a_mistyped_flag_gets_the_closest_one(argv, hint):
    out = run(*argv)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and hint in out.stderr, out.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_cli_help_shows_examples_named_as_typed(command):
    out = run(command, "--help")
    assert out.returncode == 0 and f"examples:\n  dialogpt-onnx {command} " in out.stdout, out.stdout[-500:]
    assert "python -m" not in out.stdout  # usage, help and hints name the command a user types
    if command in ("chat", "generate"):
        assert "(default: 64)" in out.stdout  # --max-new-tokens


@pytest.mark.parametrize(("command", "blocked", "extra"), [
    ("export", "torch", "export"), ("train", "torch", "train"), ("serve", "uvicorn", "serve"),
    ("bench", "tqdm", "export")])
def test_a_missing_extra_is_one_line_naming_the_install(exported, tmp_path, command, blocked, extra):
    """Without an extra installed, a command says in one line which `pip install` brings it (exit 2)."""
    args = {"export": ["models/chat-8x256", str(tmp_path / "out")], "train": ["--data", "x", "--out", str(tmp_path)],
            "serve": [str(exported("int8"))], "bench": ["--quick", "--out", str(tmp_path / "b")]}[command]
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] == {blocked!r}:\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from dialogpt_onnx.command import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, command, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: this command needs {blocked}: pip install 'dialogpt-onnx[{extra}]'"


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(exported, tmp_path):
    """`pip install .` puts dialogpt_onnx (and its console script) into site-packages, nothing else; the
    installed package chats from outside the repository, and `bench` says it is the repository's tool."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("dialogpt_onnx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dialogpt_onnx"}, tops
    assert "dialogpt_onnx/serve/static/chat.html" in names
    assert {"dialogpt_onnx/web/chat.html", "dialogpt_onnx/web/dialogpt.mjs"} <= set(names)  # `dialogpt-onnx web`
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")) + "\n")  # numpy, ...
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    installed = {p.name for p in site.iterdir()} - {"deps.pth"}
    assert {n for n in installed if not n.endswith(".dist-info") and not n.startswith("_")} == {"dialogpt_onnx"}
    script = env / "bin" / "dialogpt-onnx"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    gen = subprocess.run([str(script), "generate", str(exported("int8")), "Hello", "--max-new-tokens", "4",
                          "--greedy"], cwd=outside, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr[-2000:]
    bench = subprocess.run([str(script), "bench", "--quick", "--out", str(tmp_path / "b")], cwd=outside,
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 2 and bench.stderr.count("\n") == 1 and "clone" in bench.stderr, bench.stderr
