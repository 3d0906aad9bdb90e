"""Training speed of the models in this folder, measured by running their real training step.

Each model file runs as a subprocess, `python <model>.py --data ... --steps N --log-every k` with
samples and checkpoints pushed past the end of the run, into a temporary folder. Its log.jsonl
gives the time per logged interval (the model files already leave sampling and checkpointing out
of it); the first interval is warm-up (allocator, cuDNN autotuning, torch.compile) and is dropped,
the rest are pooled: ms/step = their seconds / their steps. Parameter counts, device and precision
come from the header line the model prints when it starts; peak memory is the model's own `mem_gb`
(torch.cuda.max_memory_allocated over the whole run). The loader's img/s is common.Batches alone
on the same data, resolution, batch and device. Every model runs at its default widths; anything
after `--` is passed to every model unchanged.

Usage
    python bench.py                                           # every model file here, toy data, 64x64
    python bench.py dcgan sngan --data ../shared/data/anime64 --res 64 --batch 64 --steps 60
    python bench.py --device cuda --precision bf16 --json out/bench_gpu.json
    python bench.py dcgan --res 32 --batch 8 --steps 4 --log-every 2 -- --g-ch 8 --d-ch 8   # tiny
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch

from common import Batches, UserError, load_images

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ["model", "G params", "D params", "res", "batch", "precision", "ms/step", "img/s", "peak mem",
           "loader img/s"]


def model_files(folder=HERE):
    """Model names, from the files that declare `MODEL = "<their own name>"`."""
    found = []
    for name in sorted(os.listdir(folder)):
        stem = name[:-3]
        if name.endswith(".py") and re.search(rf'^MODEL = "{re.escape(stem)}"$',
                                              open(os.path.join(folder, name)).read(), re.M):
            found.append(stem)
    return found


def parse_header(text):
    """From the model's start line, `... | G 3.58M D 2.77M params | cpu fp32 | batch 64 ...`:
    {"G": 3.58e6, "D": 2.77e6, "device": "cpu", "precision": "fp32"}; missing fields are left out."""
    out = {}
    m = re.search(r"\| G ([\d.]+)M D ([\d.]+)M params \|", text)
    if m:
        out["G"], out["D"] = float(m.group(1)) * 1e6, float(m.group(2)) * 1e6
    m = re.search(r"\| (\S+) (fp32|bf16|fp16) \| batch", text)
    if m:
        out["device"], out["precision"] = m.group(1), m.group(2)
    return out


def timing(records, batch):
    """log.jsonl records -> (ms/step, img/s, steps timed), dropping the first interval as warm-up.
    Each record's img_s covers the steps since the previous record."""
    if len(records) < 2:
        raise UserError(f"need at least 2 logged intervals to drop the warm-up one; got {len(records)} "
                        f"(raise --steps or lower --log-every)")
    seconds, steps = 0.0, 0
    for prev, rec in zip(records, records[1:]):
        n = rec["step"] - prev["step"]
        seconds += n * batch / rec["img_s"]
        steps += n
    return 1000 * seconds / steps, steps * batch / seconds, steps


def bench_model(model, args, extra, out):
    """Train `model` for args.steps steps in a subprocess; returns a table row (dict)."""
    cmd = [sys.executable, os.path.join(HERE, f"{model}.py"), "--data", args.data, "--res", str(args.res),
           "--batch", str(args.batch), "--steps", str(args.steps), "--log-every", str(args.log_every),
           "--sample-every", str(10 ** 9), "--ckpt-every", str(10 ** 9), "--out", out, "--device", args.device,
           "--precision", args.precision, *(["--compile"] if args.compile else []), *extra]
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=HERE, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True)
    row = {"model": model, "res": args.res, "batch": args.batch}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(row, error=f"exit {r.returncode}: {last[:200]}")
    head = parse_header(r.stdout)
    recs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl")) if line.strip()]
    ms, img_s, steps = timing(recs, args.batch)
    row.update({"G": head.get("G"), "D": head.get("D"), "precision": head.get("precision"), "ms_step": ms,
                "img_s": img_s, "steps_timed": steps, "mem_gb": recs[-1].get("mem_gb")})
    return row


def loader_speed(data, res, batch, device, n_batches=200):
    """img/s of common.Batches alone (decode cache already built), synchronised on CUDA; the first
    10 batches (page cache, allocator) are not timed."""
    batches = Batches(load_images(data, res, verbose=False), batch, device, seed=0)
    for _ in range(10):
        next(batches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n_batches):
        x, _ = next(batches)
    sync()
    return n_batches * batch / (time.perf_counter() - t)


def fmt_rate(v):
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def fmt_params(n):
    return "?" if n is None else f"{n / 1e6:.2f}M"


def markdown_table(rows, loader_img_s):
    """Rows (dicts from bench_model) -> a markdown table with COLUMNS; a failed model gets its error."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if c == "model" or c == "precision" else "--:"
                                                              for c in COLUMNS) + "|"]
    for r in rows:
        if "error" in r:
            cells = [r["model"], f"failed: {r['error']}"] + [""] * (len(COLUMNS) - 2)
        else:
            cells = [r["model"], fmt_params(r["G"]), fmt_params(r["D"]), str(r["res"]), str(r["batch"]),
                     r["precision"] or "?", f"{r['ms_step']:.1f}", fmt_rate(r["img_s"]),
                     "-" if r["mem_gb"] is None else f"{r['mem_gb']:.2f} GB", f"{loader_img_s:.0f}"]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def device_name(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = get_args(argv[:argv.index("--")] if "--" in argv else argv)
    models = args.models or model_files()
    missing = [m for m in models if not os.path.isfile(os.path.join(HERE, f"{m}.py"))]
    if missing:
        raise UserError(f"no model file for {missing} (found: {model_files()})")
    if args.steps < 2 * args.log_every:
        raise UserError(f"--steps {args.steps} gives fewer than 2 intervals of --log-every {args.log_every}; "
                        f"the first is dropped as warm-up")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        for m in models:
            rows.append(bench_model(m, args, extra, os.path.join(tmp, m)))
            r = rows[-1]
            print(f"{m}: " + (r["error"] if "error" in r else f"{r['ms_step']:.1f} ms/step, {fmt_rate(r['img_s'])} img/s"),
                  flush=True)
    loader = loader_speed(args.data, args.res, args.batch, device)
    command = "python bench.py " + " ".join(argv)
    print(f"\n{command}\n{device_name(device)}; {args.steps} steps, the first {args.log_every} dropped as warm-up\n")
    print(markdown_table(rows, loader))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": command, "device": device_name(device), "loader_img_s": loader, "rows": rows}, f,
                      indent=1)
    return 1 if any("error" in r for r in rows) else 0


def get_args(argv=None):
    p = argparse.ArgumentParser(description="Training speed of each model file (a markdown table).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Arguments after `--` are passed to every model.")
    p.add_argument("models", nargs="*", help="model names (default: every model file here)")
    p.add_argument("--data", default="toy", help="image folder, .zip, or 'toy'")
    p.add_argument("--res", type=int, default=64, help="image resolution")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=60, help="training steps per model, warm-up included")
    p.add_argument("--log-every", type=int, default=10, help="steps per timed interval; the first is warm-up")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="passed to the models")
    p.add_argument("--compile", action="store_true", help="pass --compile to the models")
    p.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"bench: error: {e}")
