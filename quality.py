"""The quality table: every model trained for the same wall time on one part of a data set, then
FID and KID of its G_ema against a held-out part it never saw.

The split (a fixed rule, the same on every machine): the images under --data, ordered by the
sha256 of their path relative to --data (e.g. "10000_2004.jpg"); the first --heldout of that
order are held out, the rest are the training part. Both parts are folders of symbolic links
(OUT/split/train, OUT/split/heldout, class subfolders kept): no image is copied.

Each model then trains as its own program, `python <model>.py --data OUT/split/train --res R
--out OUT/<model> ...` with the widths in WIDTHS, for --minutes of wall time from its start.
After that it gets SIGINT, as from Ctrl-C: it finishes its step, saves ckpt.pt and exits.
Then `fid.py OUT/split/heldout OUT/<model>/ckpt.pt --n N` (N images of G_ema against N held-out
images, the same N for every model) and `<model>.py --sample ckpt.pt --n 32` for a grid, and
at the end OUT/grids.png, a row of 12 samples per model. One job at a time by default, so each
model has the whole machine; `--jobs 2` runs two at once on one thread each (a different budget:
say so if you publish it). On a machine shared with other work the wall-time budget is not fair.

Usage
    python quality.py --data ./faces                        # all seven, 15 minutes each, 32x32
    python quality.py --data ./faces --models dcgan sagan --minutes 5 --out out/q5
The table is printed at the end and written with every figure to OUT/quality.json; a model whose
ckpt.pt and fid.json are already in OUT is not trained again (delete OUT/<model> to redo it).
"""

import argparse
import hashlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch
from PIL import Image, ImageDraw

from common import UserError, _list_files, make_grid

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["dcgan", "wgan", "cgan", "sngan", "sagan", "biggan", "stylegan2_ada"]
# At 32x32 on a CPU: dcgan, wgan, cgan and sagan at their default widths (DCGAN's network: G 1.1M,
# D 0.7M parameters at 32x32); the GPU-sized three reduced to about DCGAN's size.
WIDTHS = {
    "dcgan": [],
    "wgan": [],
    "cgan": [],
    "sngan": ["--g-ch", "32", "--d-ch", "32"],
    "sagan": [],
    "biggan": ["--g-ch", "12", "--d-ch", "12"],
    "stylegan2_ada": ["--cbase", "2048", "--cmax", "128"],
}


def split(data, out, heldout):
    """Symbolic-link folders out/train and out/heldout; returns (n_train, n_heldout)."""
    data = os.path.abspath(os.path.expanduser(data))
    if not os.path.isdir(data):
        raise UserError(f"data folder {data!r} not found (quality.py needs a folder)")
    files = [f[0] for f in _list_files(data)]  # the loader's own walk: the same images
    if len(files) <= heldout:
        raise UserError(f"{len(files)} images in {data!r}: need more than --heldout {heldout}")
    files.sort(key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    parts = {"heldout": files[:heldout], "train": files[heldout:]}
    for part, names in parts.items():
        for rel in names:
            link = os.path.join(out, part, rel)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(os.path.join(data, rel), link)
    return len(parts["train"]), len(parts["heldout"])


class Job:
    """One command with its log file; with minutes, it gets SIGINT after that much wall time."""

    def __init__(self, cmd, log, minutes=None, after=(), threads=None, jobs=1):
        self.cmd, self.log, self.minutes, self.after = cmd, log, minutes, after
        self.threads, self.jobs = threads, jobs
        self.proc = self.t0 = self.seconds = self.rc = None

    def start(self):
        print("$ " + " ".join(self.cmd), flush=True)
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}))
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        self.t0, f = time.time(), open(self.log, "w")
        self.proc = subprocess.Popen(
            self.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE, env=env
        )
        f.close()

    def poll(self):  # True once finished
        if self.minutes and self.rc is None and time.time() - self.t0 > self.minutes * 60:
            self.proc.send_signal(signal.SIGINT)  # the model saves ckpt.pt after its step
            self.minutes = None
        if self.proc.poll() is None:
            return False
        self.seconds, self.rc = time.time() - self.t0, self.proc.returncode
        if self.minutes is not None or "--steps" in self.cmd:  # a training run: its wall time
            with open(os.path.join(os.path.dirname(self.log), "wall.json"), "w") as f:
                json.dump({"seconds": round(self.seconds), "jobs_at_once": self.jobs}, f)
        return True


def run_jobs(jobs, slots):
    """Run jobs, at most `slots` at a time, each once every job in its .after has finished."""
    waiting, running = list(jobs), []
    while waiting or running:
        for job in [j for j in running if j.poll()]:
            running.remove(job)
            if job.rc not in (0, 130):
                for j in running:
                    j.proc.kill()
                raise UserError(f"exit {job.rc}: {' '.join(job.cmd[1:3])}...: see {job.log}")
        for job in [j for j in waiting if all(a.rc is not None for a in j.after)]:
            if len(running) < slots:
                waiting.remove(job)
                job.start()
                running.append(job)
        time.sleep(0.5)


def plan(model, args, split_dir, real_job, threads):
    """The training, FID and grid jobs of one model (none where OUT/<model> is complete)."""
    out = os.path.join(args.out, model)
    ckpt, fid_json = os.path.join(out, "ckpt.pt"), os.path.join(out, "fid.json")
    if os.path.exists(fid_json):
        return []
    if os.path.exists(out):
        raise UserError(f"{out} holds an unfinished run: delete it to train {model} again")
    cmd = [sys.executable, f"{model}.py", "--data", os.path.join(split_dir, "train")]
    cmd += ["--res", str(args.res), "--out", out, "--steps", "10000000", "--seed", "0"]
    cmd += ["--ckpt-every", "500", "--device", args.device] + WIDTHS[model]
    train = Job(cmd, os.path.join(out, "train.log"), args.minutes, threads=threads, jobs=args.jobs)
    cmd = [sys.executable, "fid.py", os.path.join(split_dir, "heldout"), ckpt]
    cmd += ["--n", str(args.n), "--res", str(args.res), "--device", args.device]
    cmd += ["--json", fid_json] + (["--inception", args.inception] if args.inception else [])
    fid = Job(cmd, os.path.join(out, "fid.log"), after=[train, real_job], threads=threads)
    cmd = [sys.executable, f"{model}.py", "--sample", ckpt, "--n", "32", "--device", "cpu"]
    grid = Job(cmd, os.path.join(out, "sample.log"), after=[fid], threads=threads)
    return [train, fid, grid]


def row(model, args):
    out = os.path.join(args.out, model)
    log = open(os.path.join(out, "train.log")).read()
    head = next((line for line in log.splitlines() if " params | " in line), "")
    end = log.strip().splitlines()[-1]
    fid = json.load(open(os.path.join(out, "fid.json")))
    state = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    return dict(
        model=model,
        widths=" ".join(WIDTHS[model]) or "defaults",
        params=" ".join(re.findall(r"[GD] [\d.]+M", head)),
        step=state["step"],
        kimg=round(state["step"] * state["args"]["batch"] / 1000, 1),
        seconds=json.load(open(os.path.join(out, "wall.json")))["seconds"],
        fid=round(fid["fid"], 2),
        kid=round(fid["kid"], 4),
        n=fid["n_fake"],
        n_real=fid["n_real"],
        last_line=end,
        grid=os.path.join(out, "samples_seed0.png"),
    )


def picture(models, out, per_row=12):
    """One row of G_ema samples (seed 0) per model, its name on the left: OUT/grids.png."""
    strips = []
    for model in models:
        mod = importlib.import_module(model)
        G = mod.load_generator(os.path.join(out, model, "ckpt.pt"), "cpu")
        strips.append(make_grid(mod.generate(G, per_row, seed=0), nrow=per_row))
    w, h = strips[0].size
    canvas = Image.new("RGB", (w + 110, h * len(strips)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (model, strip) in enumerate(zip(models, strips)):
        canvas.paste(strip, (110, i * h))
        draw.text((6, i * h + h // 2 - 6), model, fill=(0, 0, 0))
    canvas.save(os.path.join(out, "grids.png"))
    return os.path.join(out, "grids.png")


def table(rows):
    lines = ["| model | widths | G, D params | steps | kimg | wall s | FID | KID |"]
    lines.append("|---|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['widths']} | {r['params']} | {r['step']:,} | {r['kimg']} | "
            f"{r['seconds']:,} | {r['fid']} | {r['kid']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--data", required=True, help="image folder (subfolders are read too)")
    p.add_argument("--out", default="out/quality", help="split, runs, quality.json")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--minutes", type=float, default=15.0, help="wall time per model")
    p.add_argument("--res", type=int, default=32, help="training and FID resolution")
    p.add_argument("--heldout", type=int, default=2000, help="images held out for FID/KID")
    p.add_argument("--n", type=int, default=2000, help="FID/KID images per side")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="jobs at once (>1: each with one thread, OMP_NUM_THREADS=1)",
    )
    p.add_argument("--device", default="cpu", help="passed to the models and fid.py")
    p.add_argument("--inception", metavar="PATH", help="local FID weights, passed to fid.py")
    args = p.parse_args(argv)
    try:
        if args.minutes <= 0 or args.heldout < 2 or args.n < 2 or args.jobs < 1:
            raise UserError("--minutes must be positive, --jobs at least 1, --heldout and --n 2")
        if args.n > args.heldout:
            raise UserError(f"--n {args.n} is more than the --heldout {args.heldout} images")
        split_dir = os.path.join(args.out, "split")
        n_train, n_held = split(args.data, split_dir, args.heldout)
        print(f"split: {n_train} training images, {n_held} held out, in {split_dir}", flush=True)
        threads = 1 if args.jobs > 1 else None  # two jobs at once: one thread each
        held = os.path.join(split_dir, "heldout")
        cmd = [sys.executable, "fid.py", held, held, "--n", str(args.n), "--res", str(args.res)]
        cmd += ["--device", args.device] + (
            ["--inception", args.inception] if args.inception else []
        )
        real = Job(cmd, os.path.join(args.out, "heldout_features.log"), threads=threads)  # cached
        jobs = [j for m in args.models for j in plan(m, args, split_dir, real, threads)]
        trains = [j for j in jobs if j.minutes]
        jobs = trains + ([real] if jobs else []) + [j for j in jobs if not j.minutes]
        if jobs:
            run_jobs(jobs, args.jobs)
        rows = [row(m, args) for m in args.models]
    except UserError as e:
        sys.exit(f"quality: error: {e}")
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(dict(args=vars(args), n_train=n_train, n_heldout=n_held, rows=rows), f, indent=1)
    print(table(rows))
    print(f"wrote {os.path.join(args.out, 'quality.json')} and {picture(args.models, args.out)}")
    return rows


if __name__ == "__main__":
    main()
