"""Speed and cost of the models in this folder, measured by running their own training loops.

Speed (the default). Each model file runs as a subprocess, `python <model>.py --data ... --steps N
--log-every k` with samples and checkpoints pushed past the end of the run, into a temporary
folder. Its log.jsonl gives the time per logged interval (the model files already leave sampling
and checkpointing out of it); the first interval is warm-up (allocator, cuDNN autotuning,
torch.compile) and is dropped, the rest are pooled: ms/step = their seconds / their steps.
Parameter counts, device and precision come from the start line the model prints, the precision
with the model's reason for it (`cpu bf16 (auto: this CPU has native bf16)`: the table says
`bf16 (auto)` or `bf16 (emulated)`, the JSON keeps the whole reason as precision_why); peak
memory is the model's own `mem_gb` (torch.cuda.max_memory_allocated over the whole run). The
loader's img/s is common.Batches alone on the same data, resolution, batch and device. Every
model runs at its default widths; anything after `--` is passed to every model unchanged.
GFLOP/s is the achieved rate, GFLOPs per training image (FLOPs, below) x img/s, with the figures
of an earlier --flops --json file given as --flops-from (counted at the same --res and `--`
flags). A timing run counts no FLOPs itself (at default widths that takes long on a CPU): without
--flops-from the column says "-".

Peak (--peak). The best rate torch reaches on this machine, in GFLOP/s: square --peak-size
matmuls (2 n^3 FLOPs each; n = 2048 on a CPU, 8192 on a GPU, big enough that the rate no longer
grows much with n) in each precision the table ran (fp32, bf16, fp16), on its device: the CPU
with torch.get_num_threads() threads, as the models run; fp32 on CUDA as TF32, as the models set
it. Two matmuls warm up, then the best of 5 timed runs of as many as fill 0.05 s (synchronised on
a GPU). It is a measured ceiling, not a datasheet figure: convolutions run on the same kind of
kernels, so "share of peak" = GFLOP/s / peak says how much of the machine's matmul rate a model's
training step turns into counted FLOPs (elementwise work, data movement and Python overhead are
the rest). On a busy machine both the rates and the peak come out low.

FLOPs (--flops). Training GFLOPs per image: one generator step with everything the paper does
around it (its D steps; G and D forward and backward; the double backward of R1, the gradient
penalty and path length), over --batch images. torch.utils.flop_counter counts the matmuls,
convolutions and attention (as its matmuls: FlopCounter) while the model's own train() runs in
this process, in fp32 at the model's default widths, on the CPU unless --device says otherwise;
the count is the same on any device. Elementwise work (activations, normalisation, Adam, EMA) is
not counted. A run also does one-off work (weight set-up, the 64-image sample grid at its last
step), and part of a step does not grow with the batch (biggan's orthogonal regularisation of
G's weights), so each model is counted in three runs, F(b, n) for n generator steps at batch b,
with b1 and b2 from --flop-batches (2 and 4: small, so that a CPU copes with default widths):
    per step at b1   S1 = (F(b1, 2N) - F(b1, N)) / N
    one-off work     O  = F(b1, N) - N * S1        (building G and D and the grid: any batch)
    per step at b2   S2 = (F(b2, N) - O) / N
    GFLOPs/img       (S2 - S1) / (b2 - b1) per image, plus the rest of S1 spread over --batch
N is the number of generator steps after which the training step repeats itself: 16 for
stylegan2_ada (lazy R1 every R1_INTERVAL = 16 steps, path length every PL_INTERVAL = 4), 1 for
the rest, whose D steps all lie inside each G step (wgan's n_critic 5, each with its gradient
penalty; biggan's n_dis 2). Work that depends on the data is pinned by flags (FLOP_ARGS): cgan
is counted without its conditional extra G step and, in a second row, with it on every step;
stylegan2_ada at augmentation probability p = 0, where ADA starts (p = 1 would add about 0.2
GFLOPs/img of resampling filters).

GPU acceptance (--acceptance). Every model at --res 64, --batch 64 and its default widths in
each of --modes (fp32, bf16, bf16+compile), timed as above, in one table with GFLOPs/img
(counted on the same device, or read from --flops-from) and the achieved TFLOP/s = GFLOPs/img *
img/s / 1000 (with --peak also its share of peak); then dcgan under `torchrun --nproc_per_node=1`
and a --resume of that run to twice the steps, each checked for exit status 0 and the step in its
ckpt.pt (PASS/FAIL lines). Exit status 0 when every run and check passed. Asked for a GPU it does
not have, it stops with one line, `bench: error: ...`, and exit status 1.

Usage
    python bench.py                                   # every model file here, toy data, 64x64
    python bench.py dcgan sngan --data ../shared/data/anime64 --res 64 --batch 64 --steps 60
    python bench.py --device cuda --precision bf16 --json out/bench_gpu.json
    python bench.py dcgan --res 32 --batch 8 --steps 4 --log-every 2 -- --g-ch 8 --d-ch 8  # tiny
    OMP_NUM_THREADS=2 python bench.py --flops --json out/flops.json   # CPU: half an hour or more
    python bench.py --flops-from out/flops.json --peak                # + GFLOP/s, share of peak
    python bench.py dcgan --flops --res 32 --json out/tiny_flops.json -- --g-ch 8 --d-ch 8
    python bench.py dcgan --res 32 --batch 8 --steps 6 --log-every 2 --peak \\
        --flops-from out/tiny_flops.json -- --g-ch 8 --d-ch 8         # both, tiny
    python bench.py --acceptance --json out/acceptance.json           # GPU: several minutes
    python bench.py --acceptance dcgan --device cpu --res 32 --batch 8 --steps 4 --log-every 2 \\
        --modes fp32 -- --g-ch 8 --d-ch 8                             # its CPU smoke run
"""

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils import flop_counter

from common import Batches, UserError, load_images

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = [
    "model",
    "G params",
    "D params",
    "res",
    "batch",
    "precision",
    "ms/step",
    "img/s",
    "peak mem",
    "loader img/s",
]
ACCEPTANCE_COLUMNS = COLUMNS[:-1] + ["GFLOPs/img", "TFLOP/s"]
SHARE = "share of peak"  # the column that --peak adds
ACCEPTANCE_MODES = ["fp32", "bf16", "bf16+compile"]
# Flags that pin down work which would otherwise depend on the data; one table row per list, the
# first is the model's figure.
FLOP_ARGS = {
    # the extra G step taken when loss_G > 2: never, then on every step
    "cgan": [["--g-extra-threshold", "inf"], ["--g-extra-threshold=-1e30"]],
    # ADA's p starts at 0 and moves with D's overfitting
    "stylegan2_ada": [["--aug", "fixed", "--p", "0"]],
}
NEVER = str(10**9)  # a --sample-every / --ckpt-every past the end of any run here
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def model_files(folder=HERE):
    """Model names, from the files that declare `MODEL = "<their own name>"`."""
    found = []
    for name in sorted(os.listdir(folder)):
        stem = name[:-3]
        if name.endswith(".py") and re.search(
            rf'^MODEL = "{re.escape(stem)}"$', open(os.path.join(folder, name)).read(), re.M
        ):
            found.append(stem)
    return found


def resolve_device(name, auto):
    """--device name -> torch.device, `auto` meaning the device named `auto`; a UserError (one line)
    for a name torch does not know or a device this machine does not have."""
    name = auto if name == "auto" else name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: unknown device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {name}: this machine has no CUDA GPU (torch.cuda.is_available() is False)"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: this machine has no MPS (Apple GPU) backend")
    return device


# --- speed --------------------------------------------------------------------------------------


def parse_header(text):
    """From the model's start line, `... | G 3.58M D 2.77M params | cpu fp32 | batch 64 ...`:
    {"G": 3.58e6, "D": 2.77e6, "device": "cpu", "precision": "fp32"}; missing fields are left
    out. A reason after the precision, `| cpu bf16 (auto: this CPU has native bf16) | batch`, is
    kept as "why"."""
    out = {}
    m = re.search(r"\| G ([\d.]+)M D ([\d.]+)M params \|", text)
    if m:
        out["G"], out["D"] = float(m.group(1)) * 1e6, float(m.group(2)) * 1e6
    m = re.search(r"\| (\S+) (fp32|bf16|fp16)(?: \(([^|]*)\))? \| batch", text)
    if m:
        out["device"], out["precision"] = m.group(1), m.group(2)
        if m.group(3) is not None:
            out["why"] = m.group(3)
    return out


def timing(records, batch):
    """log.jsonl records -> (ms/step, img/s, steps timed), dropping the first interval as warm-up.
    Each record's img_s covers the steps since the previous record."""
    if len(records) < 2:
        raise UserError(
            f"need at least 2 logged intervals to drop the warm-up one; got "
            f"{len(records)} (raise --steps or lower --log-every)"
        )
    seconds, steps = 0.0, 0
    for prev, rec in zip(records, records[1:]):
        n = rec["step"] - prev["step"]
        seconds += n * batch / rec["img_s"]
        steps += n
    return 1000 * seconds / steps, steps * batch / seconds, steps


def model_argv(model, args, out):
    """`<model>.py` with the data, resolution, batch, device and run folder of this bench run;
    no sample grids (they would be timed)."""
    path = os.path.join(HERE, f"{model}.py")
    sizes = ["--res", str(args.res), "--batch", str(args.batch), "--sample-every", NEVER]
    return [path, "--data", args.data, *sizes, "--out", out, "--device", args.device]


def bench_model(model, args, extra, out):
    """Train `model` for args.steps steps in a subprocess; returns a table row (dict)."""
    cmd = [sys.executable, *model_argv(model, args, out), "--steps", str(args.steps)]
    cmd += ["--log-every", str(args.log_every), "--ckpt-every", NEVER]
    cmd += ["--precision", args.precision, *(["--compile"] if args.compile else []), *extra]
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=HERE, env=ENV, capture_output=True, text=True)
    row = {"model": model, "res": args.res, "batch": args.batch, "compile": args.compile}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(row, error=f"exit {r.returncode}: {last[:200]}")
    head = parse_header(r.stdout)
    recs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl")) if line.strip()]
    ms, img_s, steps = timing(recs, args.batch)
    row.update(
        {
            "G": head.get("G"),
            "D": head.get("D"),
            "precision": head.get("precision"),
            "precision_why": head.get("why"),
            "ms_step": ms,
            "img_s": img_s,
            "steps_timed": steps,
            "mem_gb": recs[-1].get("mem_gb"),
        }
    )
    return row


def synchronizer(device):
    """A function that waits for the work queued on `device` (a GPU runs asynchronously)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def loader_speed(data, res, batch, device, n_batches=200):
    """img/s of common.Batches alone (decode cache already built), synchronised on CUDA; the first
    10 batches (page cache, allocator) are not timed."""
    batches = Batches(load_images(data, res, verbose=False), batch, device, seed=0)
    for _ in range(10):
        next(batches)
    sync = synchronizer(device)
    sync()
    t = time.perf_counter()
    for _ in range(n_batches):
        x, _ = next(batches)
    sync()
    return n_batches * batch / (time.perf_counter() - t)


# --- FLOPs --------------------------------------------------------------------------------------


def attention_flops(query, key, value, *args, out_shape=None, **kwargs):
    """softmax(q k^T) v: its two matmuls (shapes (B, heads, N, d))."""
    return flop_counter.sdpa_flop_count(query, key, value)


def attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    """The backward of softmax(q k^T) v: its four matmuls, as autograd runs them on the math path.
    torch's formula for the fused kernels adds a fifth, their recomputation of q k^T."""
    b, heads, n_q, d = query
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value) - (
        2 * b * heads * n_q * key[2] * d
    )


ATTENTION_OPS = {  # F.scaled_dot_product_attention's fused kernels (each torch build has some)
    "_scaled_dot_product_flash_attention_for_cpu": attention_flops,
    "_scaled_dot_product_flash_attention_for_cpu_backward": attention_backward_flops,
    "_scaled_dot_product_flash_attention_backward": attention_backward_flops,
    "_scaled_dot_product_efficient_attention_backward": attention_backward_flops,
    "_scaled_dot_product_cudnn_attention_backward": attention_backward_flops,
}


class NoModules:
    """Stands in for FlopCounterMode's module tracker: every count goes to the total."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class FlopCounter(flop_counter.FlopCounterMode):
    """FlopCounterMode's total, with two changes for these models:
    - no per-module breakdown: its module tracker hooks every module input that requires grad, and
      torch.autograd.grad() at such a leaf (wgan's gradient penalty, stylegan2_ada's R1) then
      fails (pytorch/pytorch#131753);
    - attention counted as its matmuls whichever kernel runs it (ATTENTION_OPS): the fused CPU
      kernel, which torch's table lacks, and the fused backward kernels without their
      recomputation of q k^T. sagan's and biggan's attention takes the math path (plain bmm) on
      the CPU and fused kernels on a GPU; this way both count the same."""

    def __init__(self):
        aten = torch.ops.aten
        mapping = {getattr(aten, op): f for op, f in ATTENTION_OPS.items() if hasattr(aten, op)}
        super().__init__(display=False, custom_mapping=mapping)
        self.mod_tracker = NoModules()


def steps_per_cycle(mod):
    """Generator steps after which the model's training step repeats itself: the lazy
    regularisation intervals (stylegan2_ada: R1 every 16 steps, path length every 4), else 1."""
    return math.lcm(*(getattr(mod, k) for k in ("R1_INTERVAL", "PL_INTERVAL") if hasattr(mod, k)))


def count_flops(model, flags, args, batch, steps):
    """FLOPs counted while `model`'s own train() runs `steps` generator steps at `batch` in fp32,
    into a temporary folder; the model's printing is swallowed."""
    mod = importlib.import_module(model)
    with tempfile.TemporaryDirectory(prefix="flops_") as tmp:
        run = mod.get_args(
            [
                "--data",
                args.data,
                "--res",
                str(args.res),
                "--batch",
                str(batch),
                "--steps",
                str(steps),
                "--out",
                os.path.join(tmp, model),
                "--device",
                args.device,
                "--precision",
                "fp32",
                "--log-every",
                NEVER,
                "--sample-every",
                NEVER,
                "--ckpt-every",
                NEVER,
                *flags,
            ]
        )
        with FlopCounter() as counter, contextlib.redirect_stdout(io.StringIO()):
            mod.train(run)
    return counter.get_total_flops()


def flops_row(model, flags, args):
    """GFLOPs per image of one generator step of `model` at --batch, from three counted runs (the
    module docstring); returns a table row (dict)."""
    n = steps_per_cycle(importlib.import_module(model))
    b1, b2 = args.flop_batches
    load_images(args.data, args.res, verbose=False)  # decode or draw the data outside the counts
    row = {
        "model": model,
        "flags": " ".join(flags),
        "res": args.res,
        "batch": args.batch,
        "steps_counted": n,
    }
    t = time.time()
    try:
        f1, f2, f3 = (
            count_flops(model, flags, args, batch, steps)
            for batch, steps in [(b1, n), (b1, 2 * n), (b2, n)]
        )
    except (Exception, SystemExit) as e:  # one model's failure is its row's, not the table's
        return dict(row, error=f"{type(e).__name__}: {e}".splitlines()[0][:200])
    s1 = (f2 - f1) / n
    s2 = (f3 - (f1 - n * s1)) / n
    per_image = (s2 - s1) / (b2 - b1)
    per_step = s1 - b1 * per_image  # the part of a step that does not grow with the batch
    return dict(
        row,
        gflops_img=(per_image + per_step / args.batch) / 1e9,
        gflop_per_image=per_image / 1e9,
        gflop_per_step=per_step / 1e9,
        gflops_img_at={str(b1): s1 / b1 / 1e9, str(b2): s2 / b2 / 1e9},
        seconds=time.time() - t,
    )


def flops_rows(models, args, extra, settings=None):
    """A row per model and setting in FLOP_ARGS (only the first with settings=1); progress is
    printed as the rows come."""
    rows = []
    for m in models:
        for flags in FLOP_ARGS.get(m, [[]])[:settings]:
            rows.append(flops_row(m, flags + extra, args))
            r = rows[-1]
            label = f"{m} {r['flags']}" if r["flags"] else m
            print(
                f"{label}: "
                + (
                    r["error"]
                    if "error" in r
                    else f"{r['gflops_img']:.4g} GFLOPs/img at batch {args.batch} = "
                    f"{r['gflop_per_image']:.4g} per image + {r['gflop_per_step']:.4g} per step / "
                    f"{args.batch}; counted in {r['seconds']:.0f} s"
                ),
                flush=True,
            )
    return rows


def gflops_at(row, batch):
    """A FLOP row's GFLOPs per image at another batch."""
    return row["gflop_per_image"] + row["gflop_per_step"] / batch


def flops_table(rows, flop_batches):
    """FLOP rows (dicts from flops_row) -> a markdown table; a failed model gets its error."""
    b1, b2 = (str(b) for b in flop_batches)
    columns = [
        "model",
        "flags",
        "res",
        "batch",
        "GFLOPs/img",
        f"at batch {b1}",
        f"at batch {b2}",
        "GFLOP/step fixed",
        "N",
    ]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["model"], r["flags"], f"failed: {r['error']}"] + [""] * 6)
        else:
            at = r["gflops_img_at"]
            lines.append(
                [
                    r["model"],
                    r["flags"],
                    str(r["res"]),
                    str(r["batch"]),
                    fmt_gflops(r["gflops_img"]),
                    fmt_gflops(at[b1]),
                    fmt_gflops(at[b2]),
                    fmt_gflops(r["gflop_per_step"]),
                    str(r["steps_counted"]),
                ]
            )
    return markdown(columns, lines)


def add_flop_rates(rows, flops, peaks=None):
    """Timed rows (from bench_model) get, from their model's FLOP row in `flops` ({model: row},
    from read_flops or flops_rows), gflops_img at their batch and the achieved tflop_s =
    gflops_img * img_s / 1000; with `peaks` ({precision: GFLOP/s}, from measure_peaks) also
    share_of_peak = achieved / the peak of their precision. Failed rows and models without a
    FLOP figure are left as they are."""
    for r in rows:
        f = (flops or {}).get(r["model"])
        if "error" in r or not f or "error" in f:
            continue
        r["gflops_img"] = gflops_at(f, r["batch"])
        r["tflop_s"] = r["gflops_img"] * r["img_s"] / 1000
        peak = (peaks or {}).get(r.get("precision"))
        if peak:
            r["share_of_peak"] = 1000 * r["tflop_s"] / peak
    return rows


# --- peak ---------------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_gflop_s(device, precision, size=4096, trials=5, min_seconds=0.05):
    """The best matmul rate torch reaches on `device` in `precision`, in GFLOP/s: size x size
    matmuls (2 size^3 FLOPs each), two for warm-up (kernel choice, clocks), then the best of
    `trials` timed runs of as many as fill `min_seconds`. fp32 on CUDA runs as TF32, as the models
    set it (torch.set_float32_matmul_precision("high"); restored after)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device, DTYPES[precision]) for _ in "ab")
    out, sync = torch.empty_like(a), synchronizer(device)
    old = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        for _ in range(2):
            torch.matmul(a, b, out=out)
        sync()
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        reps = max(1, math.ceil(min_seconds / max(time.perf_counter() - t, 1e-9)))
        best = math.inf
        for _ in range(trials):
            t = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            sync()
            best = min(best, (time.perf_counter() - t) / reps)
    finally:
        torch.set_float32_matmul_precision(old)
    return 2 * size**3 / best / 1e9


def measure_peaks(device, precisions, size):
    """{precision: peak GFLOP/s} for each of `precisions` (peak_gflop_s), printed as it comes."""
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    peaks = {}
    for p in precisions:
        peaks[p] = peak_gflop_s(device, p, size)
        print(f"peak {p} on {where}: {fmt_rate(peaks[p])} GFLOP/s ({size}x{size} matmuls)")
    return peaks


# --- GPU acceptance -----------------------------------------------------------------------------


def parse_mode(mode):
    """'bf16+compile' -> ("bf16", True)."""
    m = re.fullmatch(r"(fp32|bf16|fp16)(\+compile)?", mode)
    if not m:
        raise UserError(
            f"--modes {mode}: expected a precision (fp32, bf16, fp16), optionally with +compile"
        )
    return m.group(1), m.group(2) is not None


def torchrun_and_resume(model, args, extra, out):
    """`model` under `torchrun --nproc_per_node=1` for --log-every steps, then a --resume of that
    run to twice as many; each passes when it exits 0 with its ckpt.pt at the step asked for."""
    k = args.log_every
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    cmd += model_argv(model, args, out) + ["--log-every", str(k), "--ckpt-every", str(k), *extra]
    checks = []
    for name, more, want in [
        (f"torchrun --nproc_per_node=1 {model}.py --steps {k}", ["--steps", str(k)], k),
        (
            f"torchrun --nproc_per_node=1 {model}.py --resume --steps {2 * k}",
            ["--resume", "--steps", str(2 * k)],
            2 * k,
        ),
    ]:
        print("$ " + " ".join(cmd + more), flush=True)
        r = subprocess.run(cmd + more, cwd=HERE, env=ENV, capture_output=True, text=True)
        step = None
        if r.returncode != 0:
            detail = f"exit {r.returncode}: " + (r.stderr.strip().splitlines() or ["no output"])[-1]
        else:
            try:
                ckpt = importlib.import_module(model).load_checkpoint(os.path.join(out, "ckpt.pt"))
                step = ckpt["step"]
                detail = f"exit 0, ckpt.pt at step {step} (expected {want})"
            except UserError as e:
                detail = f"exit 0, but {e}"
        checks.append({"check": name, "ok": step == want, "detail": detail[:300]})
    return checks


def read_flops(path, args, extra):
    """{model: FLOP row} from a --flops --json file counted at the same resolution and widths."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--flops-from {path}: not readable ({type(e).__name__})") from None
    if saved.get("res") != args.res or saved.get("extra") != extra:
        raise UserError(
            f"--flops-from {path} was counted at --res {saved.get('res')} with "
            f"{saved.get('extra')} after --; this run is at {args.res} with {extra}"
        )
    found = {}
    for r in saved["rows"]:
        found.setdefault(r["model"], r)  # the first row of a model is its figure (FLOP_ARGS)
    return found


def acceptance(args, models, extra, device):
    """Every model in every --modes, timed; the torchrun and resume checks; FLOPs; with --peak the
    peak of each precision. Returns (rows, checks, FLOP rows, peaks or None)."""
    flops = read_flops(args.flops_from, args, extra) if args.flops_from else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="acceptance_") as tmp:
        for m in models:
            for mode in args.modes:
                precision, compiled = parse_mode(mode)
                run = argparse.Namespace(**vars(args))
                run.precision, run.compile = precision, compiled
                t = time.time()
                rows.append(bench_model(m, run, extra, os.path.join(tmp, f"{m}_{mode}")))
                r = rows[-1]
                print(
                    f"{m} {mode}: "
                    + (
                        r["error"]
                        if "error" in r
                        else f"{r['ms_step']:.1f} ms/step, {fmt_rate(r['img_s'])} img/s"
                    )
                    + f" ({time.time() - t:.0f} s)",
                    flush=True,
                )
                if "error" in r:
                    r["error"] = f"{mode}: {r['error']}"
        ddp_model = "dcgan" if "dcgan" in models else models[0]
        checks = torchrun_and_resume(ddp_model, args, extra, os.path.join(tmp, "torchrun"))
    if flops is None:
        print(f"counting FLOPs on {device}", flush=True)
        flops = {r["model"]: r for r in flops_rows(models, args, extra, settings=1)}
    precisions = dict.fromkeys(parse_mode(mode)[0] for mode in args.modes)
    peaks = measure_peaks(device, precisions, args.peak_size) if args.peak else None
    add_flop_rates(rows, flops, peaks)
    return rows, checks, list(flops.values()), peaks


# --- tables -------------------------------------------------------------------------------------


def fmt_rate(v):
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def fmt_params(n):
    return "?" if n is None else f"{n / 1e6:.2f}M"


def fmt_gflops(v):
    return "-" if v is None else f"{v:.4g}"


def fmt_share(v):
    return "-" if v is None else f"{100 * v:.2g}%" if v < 0.1 else f"{100 * v:.0f}%"


def fmt_precision(r):
    """A row's precision cell: `bf16`, `bf16 (auto)` when auto chose it, `bf16 (emulated)` where
    the model said its CPU has no native bf16; `+compile` when compiled."""
    why = r.get("precision_why") or ""
    note = " (auto)" if why.startswith("auto") else " (emulated)" if "emulated" in why else ""
    return (r["precision"] or "?") + note + ("+compile" if r.get("compile") else "")


def speed_columns(peaks=None):
    """The speed table's columns: COLUMNS with the achieved GFLOP/s after img/s, and with `peaks`
    (--peak) its share of the peak."""
    i = COLUMNS.index("img/s") + 1
    return COLUMNS[:i] + ["GFLOP/s"] + ([SHARE] if peaks else []) + COLUMNS[i:]


def markdown(columns, rows):
    """A markdown table; `rows` are lists of cells, one per column, '|' in a cell becomes '/'."""
    text = {"model", "precision", "flags"}
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in text else "--:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown_table(rows, loader_img_s=None, columns=COLUMNS):
    """Rows (dicts from bench_model) -> a markdown table with `columns`; a failed model gets its
    error."""
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["model"], f"failed: {r['error']}"] + [""] * (len(columns) - 2))
            continue
        tflop_s = r.get("tflop_s")
        cells = {
            "model": r["model"],
            "G params": fmt_params(r["G"]),
            "D params": fmt_params(r["D"]),
            "res": str(r["res"]),
            "batch": str(r["batch"]),
            "precision": fmt_precision(r),
            "ms/step": f"{r['ms_step']:.1f}",
            "img/s": fmt_rate(r["img_s"]),
            "peak mem": "-" if r["mem_gb"] is None else f"{r['mem_gb']:.2f} GB",
            "loader img/s": "-" if loader_img_s is None else f"{loader_img_s:.0f}",
            "GFLOPs/img": fmt_gflops(r.get("gflops_img")),
            "TFLOP/s": "-" if tflop_s is None else f"{tflop_s:.3g}",
            "GFLOP/s": "-" if tflop_s is None else fmt_rate(1000 * tflop_s),
            SHARE: fmt_share(r.get("share_of_peak")),
        }
        lines.append([cells[c] for c in columns])
    return markdown(columns, lines)


def device_name(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def peak_note(peaks, size):
    """The table's caption for --peak: each precision's peak, or nothing without --peak."""
    if not peaks:
        return ""
    rates = ", ".join(f"{p} {fmt_rate(v)} GFLOP/s" for p, v in peaks.items())
    return f"; peak ({size}x{size} matmuls, best of 5): {rates}"


def write_json(path, record):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


# --- command line -------------------------------------------------------------------------------


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = get_args(argv[: argv.index("--")] if "--" in argv else argv)
    models = args.models or model_files()
    missing = [m for m in models if not os.path.isfile(os.path.join(HERE, f"{m}.py"))]
    if missing:
        raise UserError(f"no model file for {missing} (found: {model_files()})")
    if args.flops and args.acceptance:
        raise UserError("--flops and --acceptance: choose one (--acceptance counts FLOPs too)")
    if args.flops and (args.flops_from or args.peak):
        raise UserError("--flops counts FLOPs; --flops-from and --peak go with a timed run")
    if args.peak_size is not None and args.peak_size < 1:
        raise UserError(f"--peak-size {args.peak_size}: a matrix size of at least 1")
    b1, b2 = args.flop_batches
    if b1 == b2 or min(b1, b2) < 2 or b1 % 2 or b2 % 2:
        raise UserError(
            f"--flop-batches {b1} {b2}: two different even batches (stylegan2_ada's "
            f"path length runs on half the batch)"
        )
    if args.acceptance and (args.precision != "auto" or args.compile):
        raise UserError("--acceptance runs each of --modes; --precision and --compile do not apply")
    for mode in args.modes:
        parse_mode(mode)
    if args.steps is None:
        args.steps = 30 if args.acceptance else 60
    if not args.flops and args.steps < 2 * args.log_every:
        raise UserError(
            f"--steps {args.steps} gives fewer than 2 intervals of --log-every "
            f"{args.log_every}; the first is dropped as warm-up"
        )
    if args.flops or args.acceptance:  # FLOPs are counted on the CPU; acceptance is for a GPU
        auto = "cpu" if args.flops else "cuda"
    else:
        auto = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    device = resolve_device(args.device, auto)
    args.device = auto if args.device == "auto" else args.device
    if args.peak_size is None:  # big enough that the matmul rate no longer grows with it
        args.peak_size = 8192 if device.type == "cuda" else 2048
    command = "python bench.py " + " ".join(argv)
    start = time.time()

    if args.flops:
        rows = flops_rows(models, args, extra)
        print(
            f"\n{command}\n{device_name(device)}; fp32; counted at batch {b1} and {b2}, per "
            f"image at batch {args.batch}; {time.time() - start:.0f} s in all\n"
        )
        print(flops_table(rows, args.flop_batches))
        if args.json:
            write_json(
                args.json,
                {
                    "command": command,
                    "device": device_name(device),
                    "res": args.res,
                    "extra": extra,
                    "rows": rows,
                },
            )
        return 1 if any("error" in r for r in rows) else 0

    if args.acceptance:
        rows, checks, flop_rows, peaks = acceptance(args, models, extra, device)
        print(
            f"\n{command}\n{device_name(device)}; {args.steps} steps, the first {args.log_every} "
            f"dropped as warm-up; GFLOPs/img "
            + (f"from {args.flops_from}" if args.flops_from else f"counted on {device}")
            + peak_note(peaks, args.peak_size)
            + f"; {time.time() - start:.0f} s in all\n"
        )
        columns = ACCEPTANCE_COLUMNS + ([SHARE] if peaks else [])
        print(markdown_table(rows, columns=columns) + "\n")
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
        if args.json:
            write_json(
                args.json,
                {
                    "command": command,
                    "device": device_name(device),
                    "rows": rows,
                    "checks": checks,
                    "flops": flop_rows,
                    "peak_gflop_s": peaks,
                },
            )
        return 0 if all("error" not in r for r in rows) and all(c["ok"] for c in checks) else 1

    flops = read_flops(args.flops_from, args, extra) if args.flops_from else None  # before any run
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        for m in models:
            rows.append(bench_model(m, args, extra, os.path.join(tmp, m)))
            r = rows[-1]
            print(
                f"{m}: "
                + (
                    r["error"]
                    if "error" in r
                    else f"{r['ms_step']:.1f} ms/step, {fmt_rate(r['img_s'])} img/s"
                ),
                flush=True,
            )
    loader = loader_speed(args.data, args.res, args.batch, device)
    precisions = dict.fromkeys(r["precision"] for r in rows if r.get("precision"))
    peaks = measure_peaks(device, precisions, args.peak_size) if args.peak else None
    add_flop_rates(rows, flops, peaks)
    print(
        f"\n{command}\n{device_name(device)}; {args.steps} steps, the first {args.log_every} "
        f"dropped as warm-up; GFLOP/s = GFLOPs/img "
        + (f"from {args.flops_from} x img/s" if flops else "(no --flops-from) x img/s")
        + peak_note(peaks, args.peak_size)
        + "\n"
    )
    print(markdown_table(rows, loader, columns=speed_columns(peaks)))
    if args.json:
        write_json(
            args.json,
            {
                "command": command,
                "device": device_name(device),
                "loader_img_s": loader,
                "flops_from": args.flops_from,
                "peak_gflop_s": peaks,
                "rows": rows,
            },
        )
    return 1 if any("error" in r for r in rows) else 0


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="Training speed of each model file (a markdown table; with --flops-from its "
        "GFLOP/s, with --peak its share of the matmul peak); with --flops its training FLOPs per "
        "image; with --acceptance the GPU acceptance run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Arguments after `--` are passed to every model.",
    )
    p.add_argument("models", nargs="*", help="model names (default: every model file here)")
    p.add_argument("--data", default="toy", help="image folder, .zip, or 'toy'")
    p.add_argument("--res", type=int, default=64, help="image resolution")
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per model, warm-up included; unset: 60, or 30 with --acceptance",
    )
    p.add_argument(
        "--log-every", type=int, default=10, help="steps per timed interval; the first is warm-up"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda, else mps, else cpu; cpu with --flops, cuda with "
        "--acceptance), or e.g. cuda:1",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="passed to the models",
    )
    p.add_argument("--compile", action="store_true", help="pass --compile to the models")
    p.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    p.add_argument(
        "--flops",
        action="store_true",
        help="count training GFLOPs per image at --batch instead of timing",
    )
    p.add_argument(
        "--flop-batches",
        type=int,
        nargs=2,
        default=[2, 4],
        metavar=("B1", "B2"),
        help="the two batches FLOPs are counted at (--flops, --acceptance)",
    )
    p.add_argument(
        "--acceptance",
        action="store_true",
        help="GPU acceptance: every model in every --modes, FLOPs, torchrun and resume",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=ACCEPTANCE_MODES,
        help="--acceptance: precisions to time, each optionally with +compile",
    )
    p.add_argument(
        "--flops-from",
        metavar="JSON",
        help="GFLOPs/img from this --flops --json file (the GFLOP/s column; --acceptance: not "
        "counted again)",
    )
    p.add_argument(
        "--peak",
        action="store_true",
        help="measure the peak GFLOP/s of a matmul in each precision benched (the best rate torch "
        "reaches here) and add each row's share of it",
    )
    p.add_argument(
        "--peak-size",
        type=int,
        default=None,
        help="--peak: rows and columns of the square matmuls; unset: 8192 on a GPU, 2048 else",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"bench: error: {e}")
