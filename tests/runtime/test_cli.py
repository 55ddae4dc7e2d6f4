"""The chat / generate CLI: output equal to the API, one line per piped line, one-line errors, Ctrl-C while
a reply streams and at the prompt (piped and on a terminal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from checkpoints import ROOT
from processes import one_line, wait_until_reading

from dialogpt_onnx import runtime


def run_runtime(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx.runtime", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=300)


# -- runtime: CLI --------------------------------------------------------------------------------
def test_cli_generate_equals_the_api(exported):
    d = str(exported("int8"))
    model = runtime.load(d)
    for flags, opts in ((["--seed", "5"], runtime.chat_options(seed=5)), (["--greedy"], runtime.GREEDY)):
        gen = subprocess.run([sys.executable, "-m", "dialogpt_onnx.runtime", "generate", d, "Hello", "--max-new-tokens",
                              "8", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert gen.returncode == 0, gen.stderr
        assert gen.stdout == model.generate("Hello", max_new_tokens=8, **opts).text + "\n"  # the chat defaults
    for flags, phrase in ((["--greedy", "--temperature", "0.7"], "--temperature samples, --greedy does not"),
                          (["--greedy", "--do-sample"], "--do-sample samples, --greedy does not")):
        proc = run_runtime("generate", d, "Hello", *flags)
        one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2, phrase)
    # a sampling flag samples even without --do-sample (the defaults' other options stay)
    proc = run_runtime("generate", d, "Hello", "--max-new-tokens", "8", "--top-p", "0.5", "--seed", "2")
    assert proc.stdout.decode() == model.generate("Hello", **runtime.chat_options(
        max_new_tokens=8, top_p=0.5, seed=2, do_sample=True)).text + "\n"


def test_cli_generate_controls_equal_the_api(exported):
    """--stop, --logit-bias, the penalties, N replies and per-token log-probabilities as JSON lines: what
    generate() gives for the same options."""
    import json

    d = str(exported("fp32"))
    model = runtime.load(d)
    opts = {"max_new_tokens": 12, "min_new_tokens": 12, "frequency_penalty": 0.5, "presence_penalty": 0.25}
    first = model.generate("Hello", **opts)
    stop = first.text[len(first.text) // 2:][:2]
    flags = ["--max-new-tokens", "12", "--min-new-tokens", "12", "--frequency-penalty", "0.5",
             "--presence-penalty", "0.25", "--logit-bias", f"{first.ids[0]}:-2.5", "--stop", stop, "--greedy"]
    want = model.generate("Hello", **opts, logit_bias={first.ids[0]: -2.5}, stop=[stop], top_logprobs=2)
    gen = run_runtime("generate", d, "Hello", *flags, "--top-logprobs", "2")
    assert gen.returncode == 0, gen.stderr
    got = json.loads(gen.stdout)
    assert got["text"] == want.text and got["finish_reason"] == want.finish_reason
    assert [t["id"] for t in got["tokens"]] == want.ids
    assert [len(t["top"]) for t in got["tokens"]] == [2] * len(want.ids)
    many = run_runtime("generate", d, "Hello", "--do-sample", "--seed", "3", "--num-return-sequences", "3",
                       "--max-new-tokens", "8")
    assert many.returncode == 0, many.stderr
    want_many = model.generate("Hello", **runtime.chat_options(do_sample=True, seed=3, max_new_tokens=8),
                               num_return_sequences=3)
    assert many.stdout.decode().splitlines() == [g.text for g in want_many]


def test_cli_generate_invalid_utf8_argument(exported):
    proc = subprocess.run([sys.executable.encode(), b"-m", b"dialogpt_onnx.runtime", b"generate",
                           str(exported("int8")).encode(), b"caf\xe9 \xff"],
                          cwd=ROOT, capture_output=True, timeout=120)
    one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2,
             "text is not valid UTF-8")


@pytest.mark.parametrize("args,phrase", [
    (("--threads", "-1"), "--threads: must be >= 1"), (("--max-length", "0"), "--max-length: must be >= 1"),
    (("--top-p", "2"), "top_p must be a number in (0, 1]"), (("--seed", "-3"), "--seed: must be >= 0"),
    (("--max-history-tokens", "0"), "--max-history-tokens: must be >= 1"),
    (("--temperature", "inf"), "--temperature: must be a finite number"),
    (("--logit-bias", "40"), "is not TOKEN_ID:BIAS"), (("--logit-bias", "99999999:1"), "outside the vocabulary"),
    (("--presence-penalty", "3"), "presence_penalty must be a number in [-2, 2]"),
    (("--stop", ""), "stop must be a list of non-empty strings"),
])
def test_cli_bad_arguments_one_line(exported, args, phrase):
    proc = run_runtime("chat", exported("int8"), *args, stdin=b"Hello\n")
    one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2, phrase)


def test_piped_chat_one_line_per_input_line(exported):
    lines = [b"Hello there", b"", b"caf\xe9 \xff broken", b"word " * 1100, b"Are you still there?", b"   ",
             b"Bye <|endoftext|> now"]
    proc = run_runtime("chat", exported("int8"), "--max-new-tokens", "8", "--seed", "3",
                       stdin=b"\n".join(lines) + b"\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)  # exactly one line per input line
    assert out[1] == "" and out[2] == "" and out[3] == "" and out[5] == ""
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 2 and "not valid UTF-8" in err[0] and "exceeds the context" in err[1]
    assert "Traceback" not in proc.stderr.decode()
    # the chat went on after the bad lines: the reply to line 5 is the one a model gives to that history
    model = runtime.load(exported("int8"))
    chat = model.chat(max_new_tokens=8, seed=3)  # the chat defaults, as the CLI's
    assert chat.send("Hello there") == out[0]
    assert chat.send("Are you still there?") == out[4]


class _Out:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def flush(self) -> None:
        pass


def test_piped_reply_line_breaks_become_spaces():
    from dialogpt_onnx.runtime.__main__ import _reply

    def pieces():
        yield from ["one\ntwo", "\r\nthree\u2028four", "\x0bfive"]

    out = _Out()
    wrote, stopped = _reply(pieces(), out, piped=True)
    text = "".join(out.parts)
    assert wrote and not stopped and text == "one two  three four five" and len(text.splitlines()) == 1


def test_ctrl_c_stops_the_reply_and_keeps_the_turn(exported):
    """The first Ctrl-C during a reply ends that reply (what was written becomes the bot's turn); the
    chat goes on."""
    from dialogpt_onnx.runtime.__main__ import _reply

    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=40, min_new_tokens=40)

    def interrupted(it):
        for i, piece in enumerate(it):
            if i == 3:
                os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: delivered to this main thread
            yield piece

    stream = chat.stream("Tell me everything")
    out = _Out()
    wrapper = interrupted(stream)
    wrote, stopped = _reply(wrapper, out, piped=True)
    stream.close()  # the REPL closes the chat's stream through the wrapper; here the wrapper is ours
    assert wrote and stopped
    assert chat.history[-1] == "".join(out.parts).strip() or chat.history[-1].startswith("".join(out.parts)[:5])
    assert len(chat.turns) == 2 and len(chat.turns[1]) < 40
    assert chat.send("Go on")  # the chat continues
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


PTY_DRIVER = r"""
import os, pty, select, signal, sys, time
# The child is the real chat CLI with every token paced at 20 ms, so its 1000-token reply lasts 20 s: only
# the Ctrl-C ends it, however fast the machine (unpaced, the tiny model's reply ended before a fixed sleep).
CHILD = (
    "import sys, time\n"
    "import dialogpt_onnx.runtime.text as text\n"
    "push = text.StreamDecoder.push\n"
    "text.StreamDecoder.push = lambda self, token: (time.sleep(0.02), push(self, token))[1]\n"
    "from dialogpt_onnx.runtime.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
pid, fd = pty.fork()
if pid == 0:
    # a terminal's foreground job gets SIGINT's default action whatever this driver inherited (a background
    # job's SIGINT is ignored, and exec keeps that): Python then turns Ctrl-C into KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, "-c", CHILD, "chat", sys.argv[1],
                              "--max-new-tokens", "1000", "--min-new-tokens", "1000"])
screen = b""
def read_until(done, timeout=30):
    global screen
    end = time.time() + timeout
    while not done() and time.time() < end:
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            screen += os.read(fd, 4096)
        except OSError:
            break
    return done()
sys.path.insert(0, sys.argv[2])
from processes import wait_until_reading  # a prompt on screen is not yet a read that Ctrl-C interrupts
steps = [read_until(lambda: b">>> You: " in screen)]
os.write(fd, b"Tell me a very long story\n")
bot = lambda: screen.find(b"Bot: ")
# the event: reply text is streaming (some characters after "Bot: ")
steps.append(read_until(lambda: bot() >= 0 and len(screen) > bot() + len(b"Bot: ") + 8))
os.write(fd, b"\x03")                                   # Ctrl-C during the reply
steps.append(read_until(lambda: b"(stopped)" in screen))
steps.append(read_until(lambda: b">>> You: " in screen[screen.find(b"(stopped)"):]) and wait_until_reading(pid))
os.write(fd, b"\x03")                                   # Ctrl-C at the prompt
read_until(lambda: False, timeout=15)                   # drain until the child closes the terminal
end = time.time() + 15                                  # closing the terminal comes a moment before the exit
done, status = os.waitpid(pid, os.WNOHANG)
while not done and time.time() < end:
    time.sleep(0.05)
    done, status = os.waitpid(pid, os.WNOHANG)
if not done:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(steps, os.waitstatus_to_exitcode(status) if done else "still running")
print(screen.decode(errors="replace"), file=sys.stderr)
"""


def test_ctrl_c_interactive_session(exported, tmp_path):
    """Interactive chat on a terminal: Ctrl-C during a reply prints (stopped) and the prompt returns;
    Ctrl-C at the prompt exits 130. Driven through a pseudo-terminal by a separate process."""
    driver = tmp_path / "driver.py"
    driver.write_text(PTY_DRIVER)
    proc = subprocess.run([sys.executable, str(driver), str(exported("fp32")), str(ROOT / "tests")], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=180)
    assert proc.stdout.strip() == "[True, True, True, True] 130", (proc.stdout, proc.stderr[-3000:])


def test_ctrl_c_at_a_piped_chats_prompt_exits_130(exported):
    proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.runtime", "chat", str(exported("int8"))], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("Hello\n")
    proc.stdin.flush()
    assert proc.stdout.readline()  # one reply line; then the chat waits for the next line
    assert wait_until_reading(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err


def test_a_bug_is_exit_3_even_when_it_is_a_value_error(exported):
    """Only UsageError (and OS errors) are the user's: a ValueError from inside is a bug, shown with its trace."""
    child = ("import sys\nfrom dialogpt_onnx.runtime.model import DialogModel\n"
             "def broken(*args, **kwargs):\n    raise ValueError('simulated bug')\n"
             "DialogModel.generate = broken\n"
             "from dialogpt_onnx.runtime.__main__ import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", child, "generate", str(exported("int8")), "Hello"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "simulated bug" in proc.stderr and "Traceback" in proc.stderr and "internal error" in proc.stderr


REPL_DRIVER = r"""
import os, pty, select, sys, time
sys.path.insert(0, sys.argv[2])
from processes import wait_until_reading  # keys typed before the prompt reads would be echoed raw
os.environ["TERM"] = "xterm"  # a terminal's: readline binds the arrow keys by it
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "dialogpt_onnx.runtime", "chat", sys.argv[1], "--max-new-tokens",
                              "4", "--verbose", "--seed", "1"])
screen = b""
def until(text, start=0, timeout=60):
    global screen
    end = time.time() + timeout
    while text not in screen[start:] and time.time() < end:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                screen += os.read(fd, 4096)
            except OSError:
                break
    return text in screen[start:]
seen = [until(b">>> You: ")]
for line, want in [(b"/help", b"/set NAME VALUE"), (b"/history", b"(no history yet)"),
                   (b"/set temperature 0.8", b"temperature = 0.8"), (b"/set top_p 5", b"top_p must be"),
                   (b"/bogus", b"unknown command /bogus"), (b"Hello there", b"tokens/s)"),
                   (b"\x1b[A", b"tokens/s)"), (b"/history", b"You: Hello there"),
                   (b"/set", b"temperature = 0.8   (set; the default is 1.0)"),
                   (b"/set top_k default", b"top_k = 50 (the default) (unchanged)"),
                   (b"/save", b"/save needs a file name"), (b"/save " + sys.argv[3].encode(), b"(saved to")]:
    wait_until_reading(pid)
    start = len(screen)
    os.write(fd, line + b"\n")
    seen.append(until(want, start))
os.write(fd, b"/quit\n")
_, status = os.waitpid(pid, 0)
print(seen, os.waitstatus_to_exitcode(status), b"^[[A" in screen, screen.count(b"You: Hello there"))
"""


def test_interactive_commands(exported, tmp_path):
    """The REPL on a terminal: /help, /history (also when empty), /set with a checked value, unknown commands
    not sent to the model, --verbose timings, line editing (the up arrow recalls the last line), and /save,
    whose file `chat --restore` goes on with as the API's model.chat(restore=...) does."""
    driver = tmp_path / "repl.py"
    driver.write_text(REPL_DRIVER)
    saved = tmp_path / "chat.npz"
    proc = subprocess.run([sys.executable, str(driver), str(exported("int8")), str(ROOT / "tests"), str(saved)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    seen, code, raw_arrow, hello_turns = proc.stdout.strip().rsplit(" ", 3)
    assert seen == "[" + ", ".join(["True"] * 13) + "]", proc.stdout
    assert runtime.load(exported("int8")).chat(restore=saved).options.temperature == 0.8  # /save kept /set's
    again = run_runtime("chat", exported("int8"), "--restore", saved, stdin=b"I like jazz more.\n")
    assert again.returncode == 0, again.stderr
    assert again.stderr.decode().startswith(f"(restored 4 turns from {saved}; options: ") and \
        "temperature=0.8" in again.stderr.decode(), again.stderr
    restored = runtime.load(exported("int8")).chat(restore=saved)
    assert len(restored.turns) == 4  # two "Hello there" turns and their replies
    assert again.stdout.decode() == restored.send("I like jazz more.").replace("\n", " ") + "\n"
    assert code == "0" and raw_arrow == "False"
    assert int(hello_turns) >= 2  # the recalled line was sent again: /history shows it twice


def test_a_slow_load_says_so_on_a_terminal_only(monkeypatch, capsys):
    import time

    from dialogpt_onnx.runtime.cli import loading

    with loading("models/x", after=0.05):  # captured stderr is not a terminal: nothing
        time.sleep(0.15)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with loading("models/x", after=5):  # a fast load on a terminal: nothing either
        pass
    assert capsys.readouterr().err == ""
    with loading("models/x", after=0.05):
        time.sleep(0.25)
    err = capsys.readouterr().err
    assert err.startswith("loading models/x ... ") and err.endswith(" s\n") and len(err.splitlines()) == 1
    assert float(err.split("... ")[1].split()[0]) > 0  # the seconds it took
