"""The house's rules, checked on the source: each package imports only the rooms below it, no module
imports back into a circle (imports inside functions and type-only imports count), and the embeddable
runtime loads none of the serving or training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from checkpoints import ROOT

PACKAGES = ("dialogpt_onnx", "benchmarks")
# what each room may import from the others (docs/layout.md says the same); the one command loads the
# others' CLIs by name, at run time only, and the package's own names are the runtime's
RT, SV, EX, CO, TR, WB = (f"dialogpt_onnx.{r}" for r in ("runtime", "serve", "export", "corpora", "training",
                                                          "web"))
ALLOWED = {RT: set(), SV: {RT}, EX: {RT}, CO: {RT}, TR: {RT, EX, CO}, WB: {RT},
           "benchmarks": {RT, SV, EX, CO, TR, WB}, "dialogpt_onnx": {RT}}


def _room(module: str) -> str:
    """dialogpt_onnx.serve.engine -> dialogpt_onnx.serve, benchmarks.x -> benchmarks, the rest -> dialogpt_onnx"""
    parts = module.split(".")
    if parts[0] == "dialogpt_onnx" and len(parts) > 1 and ".".join(parts[:2]) in ALLOWED:
        return ".".join(parts[:2])
    return parts[0]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, wherever in the file the import statement stands."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:  # the longest project module the name refers to
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    found.add(t)
        graph[name] = found
    return graph


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the tree
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(n):], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_packages_import_only_the_rooms_below_them():
    bad = [f"{m} imports {n}" for m, ns in import_graph().items() for n in ns
           if _room(n) != _room(m) and _room(n) not in ALLOWED[_room(m)]
           and not (n == "dialogpt_onnx" and RT in ALLOWED[_room(m)])]  # the package's names are the runtime's
    assert not bad, bad


def test_import_runtime_loads_no_serving_training_or_torch_stack():
    code = ("import sys, dialogpt_onnx as dg; dg.load; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'starlette', 'uvicorn', 'ray', 'pydantic', 'torch', 'transformers', 'benchmarks'} | "
            "{m for m in sys.modules if m.startswith(('dialogpt_onnx.serve', 'dialogpt_onnx.export', "
            "'dialogpt_onnx.training'))}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)


def test_runtime_serve_names_the_new_command_without_importing_the_server():
    code = ("import sys; from dialogpt_onnx.runtime.__main__ import main; code = main(['serve', 'some/dir']); "
            "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'starlette', 'uvicorn'} | "
            "{m for m in sys.modules if m.startswith('dialogpt_onnx.serve')}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "2 []", (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "dialogpt-onnx serve MODEL_DIR" in proc.stderr


def test_no_god_files_or_functions():
    """No product file over 450 lines, no product function over 80, no test file over 500: a file that
    grows past them holds two jobs."""
    big = []
    for path in sorted((ROOT / "dialogpt_onnx").rglob("*.py")):
        src = path.read_text(encoding="utf-8")
        if src.count("\n") > 450:
            big.append(f"{path.relative_to(ROOT)}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None \
                    and node.end_lineno - node.lineno + 1 > 80:
                big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    big += [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / "tests").rglob("*.py"))
            if (n := p.read_text(encoding="utf-8").count("\n")) > 500]
    assert not big, big
