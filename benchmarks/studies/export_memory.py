"""Peak memory and time of `dialogpt-onnx export`, per model size and variant, on random-weight
checkpoints of DialoGPT's shapes (memory and time do not depend on the weights' values).

    python -m benchmarks.studies.export_memory --sizes small,medium --variants int8,int4,fp32 --out DIR

Each export runs in its own process (peak RSS of that process and its children, from the kernel's
accounting); the fp32 weights are the checkpoint's parameters x 4 bytes. Writes DIR/export_memory.json
and prints a table; progress on stderr, one line per export.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.random_checkpoint import SIZES, make_random_checkpoint


def _params(ckpt: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def measure(ckpt: Path, variant: str, out: Path) -> dict:
    """One export in a child process: its peak RSS (MB, 10^6 bytes), seconds per stage, size on disk."""
    code = ("import resource, sys\n"
            "from dialogpt_onnx.export.__main__ import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "DIALOGPT_ONNX_CACHE": "off"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), str(out), "--variant", variant, "--quiet",
                           "--overwrite"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"export {ckpt} {variant} failed: {proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.split("PEAK")[-1].split()[0])
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"peak_rss_mb": round(peak_kb * 1024 / 1e6, 1), "seconds": manifest["export_seconds"],
            "wall_seconds": round(wall, 1), "export_mb": round(size / 1e6, 1),
            "parity": {k: manifest["parity"][k] for k in ("max_abs_logit_diff", "top1_agreement",
                                                          "greedy_agreement", "greedy_identical")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,medium")
    p.add_argument("--variants", default="int8,int4,fp32")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    sizes, variants = a.sizes.split(","), a.variants.split(",")
    for s in sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}: use {', '.join(SIZES)}")
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        ckpt = a.out / "checkpoints" / size
        if not (ckpt / "model.safetensors").exists():
            make_random_checkpoint(size, ckpt)
        fp32_mb = _params(ckpt) * 4 / 1e6
        for variant in variants:
            r = measure(ckpt, variant, a.out / "work" / f"{size}-{variant}")
            rows.append({"size": size, "variant": variant, "fp32_weights_mb": round(fp32_mb, 1),
                         "peak_over_fp32": round(r["peak_rss_mb"] / fp32_mb, 2), **r})
            print(f"{size} {variant}: peak {r['peak_rss_mb']:.0f} MB ({rows[-1]['peak_over_fp32']}x fp32 "
                  f"weights), {r['wall_seconds']} s", file=sys.stderr, flush=True)
    result = {"machine": machine_info(), "command": " ".join(["python -m benchmarks.studies.export_memory",
                                                              *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows}
    (a.out / "export_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [f"# Export memory, {m['date']}", "", f"`{result['command']}`", "",
             f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; onnxruntime "
             f"{m['versions'].get('onnxruntime')}, torch {m['versions'].get('torch')}. Random weights of DialoGPT's "
             "shapes; peak RSS of the export process, MB = 10^6 bytes.", "",
             "| size | variant | fp32 weights MB | export peak MB | peak / fp32 | export MB "
             "| seconds (int4 mix, verify) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        sec = r["seconds"]
        lines.append(f"| {r['size']} | {r['variant']} | {r['fp32_weights_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_over_fp32']:.2f} | {r['export_mb']:.1f} | {r['wall_seconds']:.0f} "
                     f"({sec.get('int4 mix', 0):.0f}, {sec.get('verify', 0):.0f}) |")
    (a.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
