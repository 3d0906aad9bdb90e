"""DCGAN: "Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks", Alec Radford, Luke Metz, Soumith Chintala, 2015. arXiv:1511.06434.

Paper -> code
- all-convolutional G: a projection of z to 4x4, then fractionally-strided convolutions
  (ConvTranspose2d, stride 2) with BatchNorm and ReLU, Tanh on the output (sec. 3)  -> Generator
- D: strided convolutions instead of pooling, BatchNorm on every layer but the first,
  LeakyReLU(0.2), no fully connected hidden layers (sec. 3)                       -> Discriminator
- weights from N(0, 0.02) (sec. 4)                                                -> init_weights
- Adam, lr 2e-4, beta1 0.5 (sec. 4)                                               -> train()
- the GAN minimax game, with G maximising log D(G(z)) (Goodfellow et al. 2014)     -> loss_d, loss_g

Not from the paper
- z ~ N(0, I) (the paper used U[-1, 1]); BatchNorm's affine gain starts at N(1, 0.02), as in
  the PyTorch reference example. BatchNorm eps stays at its default.
- An exponential moving average of G's weights (G_ema, half-life --ema-kimg, ramped up from 0
  over the first 20x that many images as in StyleGAN2-ADA); all samples come from it. bf16 autocast on CUDA, DDP, checkpoints: the skeleton shared by every file here.
- Defaults: batch 64 (the paper used 128; 64 halves a CPU step and trains as well on faces),
  30k steps (~30 passes over the 63k-image Kaggle set), widths 64 (the PyTorch example's ngf/ndf).

Usage
    python dcgan.py                                   # built-in toy faces, 64x64
    python dcgan.py --data ./faces --res 64           # any folder or .zip of images
    python dcgan.py --data toy --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python dcgan.py --resume --steps 30000            # continue out/dcgan/ckpt.pt
    torchrun --nproc_per_node=4 dcgan.py --data ./faces
    python dcgan.py --sample out/dcgan/ckpt.pt --n 64 [--interp]
"""

import argparse
import copy
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import (
    Batches,
    UserError,
    load_images,
    make_grid,
    plot_losses,
    save_gif,
    save_grid,
    save_progress_gif,
)

MODEL = "dcgan"


# --- model --------------------------------------------------------------------------------------


def check_res(res):
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res). Channels halve as the resolution doubles."""

    def __init__(self, res=64, z_dim=100, ch=64):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        c = min(ch * 2 ** (n_up - 1), ch * 16)
        layers = [
            nn.ConvTranspose2d(z_dim, c, 4, 1, 0, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(True),
            ]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """image (B, 3, res, res) -> logit (B,). No BatchNorm on the input layer (sec. 3)."""

    def __init__(self, res=64, ch=64):
        super().__init__()
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        layers = [nn.Conv2d(3, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        c = ch
        for _ in range(n_down - 1):
            c2 = min(c * 2, ch * 16)
            layers += [
                nn.Conv2d(c, c2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c2),
                nn.LeakyReLU(0.2, True),
            ]
            c = c2
        layers += [nn.Conv2d(c, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()


def init_weights(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# --- losses -------------------------------------------------------------------------------------


def loss_d(logits_real, logits_fake):
    """-log D(x) - log(1 - D(G(z))), on logits for numerical stability."""
    return F.binary_cross_entropy_with_logits(
        logits_real, torch.ones_like(logits_real)
    ) + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))


def loss_g(logits_fake):
    """Non-saturating: G maximises log D(G(z)) instead of minimising log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


# --- EMA, sampling ------------------------------------------------------------------------------


def ema_beta(batch, ema_kimg):
    """Per-step decay whose half-life is ema_kimg thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """Parameters: G_ema <- beta * G_ema + (1 - beta) * G. Buffers (BatchNorm statistics): copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def sample_z(n, z_dim, gen, truncation=None):
    """z ~ N(0, I); with truncation T, entries beyond |T| are redrawn until none are left."""
    z = torch.randn(n, z_dim, generator=gen)
    while truncation is not None and (bad := z.abs() > truncation).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    return z


def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("model") != MODEL:
        found = ckpt.get("model") if isinstance(ckpt, dict) else None
        raise UserError(f"{path} is not a {MODEL} checkpoint (model: {found})")
    return ckpt


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema in eval mode, with .res, .z_dim and .classes for generate()."""
    ckpt = load_checkpoint(path, device)
    a = ckpt["args"]
    G = Generator(a["res"], a["z_dim"], a["g_ch"]).to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes = ckpt["classes"]
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None, batch=256):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; same seed, same images.
    y (class labels) is accepted for a common signature and ignored: DCGAN is unconditional."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    device = next(G.parameters()).device
    return torch.cat([G(z[i : i + batch].to(device)).float().cpu() for i in range(0, n, batch)])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, keys=4, steps=16):
    """Frames of n images, each moving along a spherical path through `keys` latents and back."""
    gen = torch.Generator().manual_seed(seed)
    zs = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)]
    device, frames = next(G.parameters()).device, []
    for k in range(keys):
        a, b = zs[k], zs[(k + 1) % keys]
        omega = torch.arccos(
            (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True).clamp(-1, 1)
        )
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(
                omega
            ).clamp_min(1e-6)
            frames.append(make_grid(G(z.to(device)).float().cpu()))
    return frames


# --- training skeleton --------------------------------------------------------------------------


def is_cuda(device):
    """Every line below that runs only on a CUDA GPU asks this first (tests fake CUDA through it)."""
    return device.type == "cuda"


def setup_device(name):
    """--device auto -> cuda, else mps, else cpu. `cuda` is this process's GPU: cuda:LOCAL_RANK
    under torchrun, else cuda:0. Under torchrun, also start DDP. Returns (device, rank, world_size)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name}: unknown device (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: this machine has no MPS (Apple GPU) backend")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name}: this machine has no CUDA GPU (or torch was built without CUDA)"
            )
        if world > 1 and device.index not in (None, local_rank):
            raise UserError(
                f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda"
            )
        index = local_rank if world > 1 else device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: cuda:{index} does not exist ({torch.cuda.device_count()} GPU(s))"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # TF32 convolutions
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device, rank, world


def setup_precision(name, device):
    """auto -> bf16 autocast on CUDA where supported, else fp32. Returns (name, autocast dtype)."""
    if name == "auto":
        name = "bf16" if is_cuda(device) and torch.cuda.is_bf16_supported() else "fp32"
    return name, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def memory_format(device):
    """channels_last on CUDA (faster convolutions with tensor cores), the default layout elsewhere."""
    return torch.channels_last if is_cuda(device) else torch.contiguous_format


def peak_memory_gb(device):
    """Peak GPU memory allocated so far, in GiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if is_cuda(device) else None


def any_rank(flag, device):
    """True on every rank when `flag` is true on any rank; all ranks must call it together."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rng_states(device):
    """This process's RNG states, gathered from every rank (index = rank)."""
    state = {"cpu": torch.get_rng_state()}
    if is_cuda(device):
        state["cuda"] = torch.cuda.get_rng_state(device)
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, {k: v.cpu() for k, v in state.items()})
    return states


def set_rng_states(states, rank, device):
    if len(states) != int(os.environ.get("WORLD_SIZE", 1)):
        print(
            f"note: checkpoint has RNG states for {len(states)} process(es); noise after resume differs"
        )
        return
    torch.set_rng_state(states[rank]["cpu"].cpu())
    if is_cuda(device) and "cuda" in states[rank]:
        torch.cuda.set_rng_state(states[rank]["cuda"].cpu(), device)


def sample_due(step, args):
    """A grid every --sample-every steps and at the end; before the first of those, also at the
    first log step and then at doubling intervals, so that a new run shows a picture early."""
    k = step // args.log_every
    early = step < args.sample_every and step % args.log_every == 0 and k & (k - 1) == 0
    return step % args.sample_every == 0 or step == args.steps or early


def save_checkpoint(path, ckpt):
    """Atomic: write a temporary file, then rename over the old checkpoint."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finite(meter, *models):
    """Losses since the last log and all weights are finite, on every rank (syncs the GPU)."""
    tensors = list(meter.sums.values()) + [p for m in models for p in m.parameters()]
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all().item()
    return not any_rank(not ok, tensors[-1].device)


class Meter:
    """Running sums of detached scalars, kept on the device so nothing syncs until `means()`."""

    def __init__(self):
        self.sums, self.n = {}, 0

    def add(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def means(self):
        keys = list(self.sums)
        vals = (
            torch.stack([self.sums[k] for k in keys]).div(max(self.n, 1)).tolist() if keys else []
        )
        self.sums, self.n = {}, 0
        return dict(zip(keys, vals))


def log_line(rec):
    """step 1200/50000 | kimg 76.8 | loss_D 1.213 | ... | 512 img/s | 1.9 GB | eta 2h41m"""
    skip = ("step", "steps", "kimg", "img_s", "mem_gb", "eta_s", "time")
    parts = [f"step {rec['step']}/{rec['steps']}", f"kimg {rec['kimg']:.1f}"]
    parts += [f"{k} {v:.4g}" for k, v in rec.items() if k not in skip]
    parts += [f"{rec['img_s']:.0f} img/s"] + (
        [f"{rec['mem_gb']:.2f} GB"] if rec.get("mem_gb") is not None else []
    )
    h, m = divmod(int(rec["eta_s"]) // 60, 60)
    return " | ".join(parts + [f"eta {h}h{m:02d}m" if h or m else f"eta {int(rec['eta_s'])}s"])


RESUME_FROM_COMMAND_LINE = (
    "data",
    "steps",
    "device",
    "compile",
    "log_every",
    "sample_every",
    "ckpt_every",
)


def start_or_resume(args):
    """Refuse to overwrite a run. On --resume every argument comes from the checkpoint except --out
    and those in RESUME_FROM_COMMAND_LINE typed on the command line; typing any other argument with
    a value other than the run's is an error (a plain --resume continues the same run)."""
    typed = set(vars(args).pop("typed", ())) - {"out", "resume"}
    path = os.path.join(args.out, "ckpt.pt")
    if not args.resume:
        if os.path.exists(path):
            raise UserError(
                f"{path} exists: pass --resume to continue that run, or choose another --out"
            )
        return args, None
    ckpt = load_checkpoint(path)
    saved = ckpt["args"]
    fixed = [
        k
        for k in sorted(typed - set(RESUME_FROM_COMMAND_LINE))
        if k in saved and getattr(args, k) != saved[k]
    ]
    if fixed:
        k = fixed[0]
        raise UserError(
            f"--{k.replace('_', '-')} {getattr(args, k)} differs from the run's {saved[k]}; on --resume "
            f"only {', '.join('--' + a.replace('_', '-') for a in RESUME_FROM_COMMAND_LINE)} can change"
        )
    kept = {k: v for k, v in saved.items() if k not in typed | {"out", "resume"}}
    if int(os.environ.get("RANK", 0)) == 0:
        given = ", ".join(f"{k}={getattr(args, k)}" for k in sorted(typed)) or "nothing"
        print(
            f"resume: from the command line: {given}; from the checkpoint: "
            + ", ".join(f"{k}={v}" for k, v in kept.items())
        )
    return argparse.Namespace(**(vars(args) | kept)), ckpt


class StopFlag:
    """Ctrl-C / SIGTERM ask the loop to save a checkpoint and stop; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum = None
        self.old = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, self.handle)
        except ValueError:  # not the main thread: no handlers
            pass

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)


def positive_int(text):
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def parse_args(parser, argv=None):
    """Parse argv; a bad value exits with one line. args.typed lists the arguments written on the
    command line (for --resume), whatever their value."""
    parser.error = lambda message: sys.exit(f"{MODEL}: error: {message} (see --help)")
    args = parser.parse_args(argv)
    # argparse leaves an attribute that the namespace already has, unless it was typed
    unset = object()
    seen = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
    args.typed = sorted(k for k, v in vars(seen).items() if v is not unset)
    return args


# --- training -----------------------------------------------------------------------------------


def train(args):
    args, ckpt = start_or_resume(args)
    check_res(args.res)
    device, rank, world = setup_device(args.device)
    precision, amp_dtype = setup_precision(args.precision, device)
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.batch % world:
        raise UserError(
            f"--batch {args.batch} must be divisible by the number of processes ({world})"
        )
    torch.manual_seed(args.seed + rank)
    data = load_images(args.data, args.res, verbose=rank == 0)
    batches = Batches(data, args.batch // world, device, args.seed, rank, world, args.flip)

    G = Generator(args.res, args.z_dim, args.g_ch).to(device)
    D = Discriminator(args.res, args.d_ch).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.5, 0.999))
    scaler_G = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    scaler_D = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = 0
    if ckpt is not None:
        for name, obj in [
            ("G", G),
            ("D", D),
            ("G_ema", G_ema),
            ("opt_G", opt_G),
            ("opt_D", opt_D),
            ("scaler_G", scaler_G),
            ("scaler_D", scaler_D),
            ("loader", batches),
        ]:
            obj.load_state_dict(ckpt[name])
        step = ckpt["step"]
        set_rng_states(ckpt["rng"], rank, device)
        say(f"resuming {args.out}/ckpt.pt at step {step}/{args.steps}")
    layout = memory_format(device)  # channels_last on CUDA
    G, D, G_ema = (m.to(memory_format=layout) for m in (G, D, G_ema))
    G_train, D_train = (DDP(G), DDP(D)) if world > 1 else (G, D)
    if args.compile:
        G_train, D_train = torch.compile(G_train), torch.compile(D_train)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    z_fixed = sample_z(64, args.z_dim, torch.Generator().manual_seed(args.seed)).to(device)
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    say(
        f"{MODEL} | {args.data}: {len(data.labels)} images, {args.res}x{args.res} | "
        f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M "
        f"params | {device} {precision} | batch {args.batch} on {world} process(es) | out {args.out}"
    )

    def checkpoint():
        ckpt = {
            "model": MODEL,
            "args": vars(args),
            "step": step,
            "classes": data.classes,
            "rng": rng_states(device),
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(),
            "opt_D": opt_D.state_dict(),
            "scaler_G": scaler_G.state_dict(),
            "scaler_D": scaler_D.state_dict(),
            "loader": batches.state_dict(),
        }
        if rank == 0:
            save_checkpoint(os.path.join(args.out, "ckpt.pt"), ckpt)

    def fail_if_not_finite():
        if not finite(meter, G, D):
            kept = (
                f"the last good checkpoint is {args.out}/ckpt.pt"
                if os.path.exists(os.path.join(args.out, "ckpt.pt"))
                else "no checkpoint had been written"
            )
            raise UserError(
                f"loss or weights became NaN/inf by step {step}; stopped without saving ({kept})"
            )

    meter, stop, t_log, step_log = Meter(), StopFlag(), time.time(), step
    try:
        while step < args.steps:
            x_real, _ = next(batches)
            x_real = x_real.contiguous(memory_format=layout)
            z = torch.randn(x_real.shape[0], args.z_dim, device=device)
            with autocast:
                x_fake = G_train(z)
                logits_real, logits_fake = D_train(x_real), D_train(x_fake.detach())
                loss_D = loss_d(logits_real.float(), logits_fake.float())
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(opt_D)
            scaler_D.update()

            with autocast:
                loss_G = loss_g(D_train(x_fake).float())
            opt_G.zero_grad(set_to_none=True)
            scaler_G.scale(loss_G).backward()
            scaler_G.step(opt_G)
            scaler_G.update()
            # the half-life ramps up to --ema-kimg over the first 20x as many images (StyleGAN2-ADA's
            # ema_rampup 0.05), so that early samples are not dominated by the initial weights
            update_ema(
                G_ema, G, ema_beta(args.batch, min(args.ema_kimg, 0.05 * step * args.batch / 1000))
            )
            step += 1
            meter.add(
                loss_D=loss_D, loss_G=loss_G, d_real=logits_real.mean(), d_fake=logits_fake.mean()
            )

            if step % args.log_every == 0 or step == args.steps:
                fail_if_not_finite()
                dt, rec = (
                    time.time() - t_log,
                    {"step": step, "steps": args.steps, "kimg": step * args.batch / 1000},
                )
                rec.update(meter.means())
                rec["img_s"] = (step - step_log) * args.batch / max(dt, 1e-9)
                rec["mem_gb"] = peak_memory_gb(device)
                rec["eta_s"] = (args.steps - step) * args.batch / max(rec["img_s"], 1e-9)
                if rank == 0:
                    print(log_line(rec), flush=True)
                    with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                        f.write(json.dumps(dict(rec, time=time.time())) + "\n")
                t_log, step_log = time.time(), step
            t_pause = time.time()  # samples and checkpoints are left out of img/s
            if sample_due(step, args) and rank == 0:
                G_ema.eval()
                with torch.no_grad():
                    save_grid(
                        G_ema(z_fixed),
                        os.path.join(args.out, "samples", f"step_{step:06d}.png"),
                        nrow=8,
                    )
                save_progress_gif(
                    os.path.join(args.out, "samples"), os.path.join(args.out, "progress.gif")
                )
                if os.path.exists(os.path.join(args.out, "log.jsonl")):
                    plot_losses(
                        os.path.join(args.out, "log.jsonl"), os.path.join(args.out, "loss.png")
                    )
            if (world == 1 or step % 10 == 0) and any_rank(stop.signum is not None, device):
                fail_if_not_finite()
                checkpoint()
                say(f"stopped at step {step}: saved {args.out}/ckpt.pt; continue with --resume")
                raise SystemExit(130 if stop.signum == signal.SIGINT else 143)
            if step % args.ckpt_every == 0 or step == args.steps:
                fail_if_not_finite()
                checkpoint()
            t_log += time.time() - t_pause
    finally:
        stop.restore()
        if dist.is_initialized():
            dist.destroy_process_group()
    say(f"done: {args.out}/ckpt.pt, samples in {args.out}/samples, loss curve {args.out}/loss.png")
    return G_ema


def sample(args):
    device, _, _ = setup_device(args.device)
    G = load_generator(args.sample, device)
    folder, tag = os.path.dirname(args.sample) or ".", f"seed{args.seed}"
    if args.interp:
        path = save_gif(
            interpolation_frames(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"interp_{tag}.gif"),
        )
    else:
        path = save_grid(
            generate(G, args.n, args.seed, args.truncation),
            os.path.join(folder, f"samples_{tag}.png"),
        )
    print(path)


# --- command line -------------------------------------------------------------------------------


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="DCGAN (Radford et al. 2015) for anime faces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default="toy", help="image folder (subfolders = classes), .zip, or 'toy'"
    )
    p.add_argument("--res", type=int, default=64, help="image resolution (power of two, >= 32)")
    p.add_argument("--out", default=f"out/{MODEL}", help="run folder: ckpt.pt, log.jsonl, samples/")
    p.add_argument(
        "--steps", type=positive_int, default=30000, help="generator updates to train for"
    )
    p.add_argument(
        "--batch", type=positive_int, default=64, help="global batch, split across processes"
    )
    p.add_argument("--lr-g", type=float, default=2e-4, help="generator Adam learning rate")
    p.add_argument("--lr-d", type=float, default=2e-4, help="discriminator Adam learning rate")
    p.add_argument(
        "--ema-kimg", type=float, default=10.0, help="G_ema half-life in thousands of images"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for weights, noise, data order and samples"
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto = bf16 autocast on CUDA when supported, else fp32; fp16 adds a GradScaler",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile G and D forward passes")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its ckpt.pt"
    )
    p.add_argument("--log-every", type=positive_int, default=50, help="steps between log lines")
    p.add_argument(
        "--sample-every", type=positive_int, default=200, help="steps between sample grids"
    )
    p.add_argument(
        "--ckpt-every", type=positive_int, default=1000, help="steps between checkpoints"
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random horizontal flips",
    )
    p.add_argument(
        "--sample", metavar="CKPT", help="sampling mode: write a grid from this checkpoint's G_ema"
    )
    p.add_argument("--n", type=positive_int, default=64, help="sampling mode: number of images")
    p.add_argument(
        "--truncation",
        type=positive_float,
        default=None,
        help="redraw z entries beyond |T| (sampling)",
    )
    p.add_argument(
        "--interp", action="store_true", help="sampling mode: latent-interpolation GIF instead"
    )
    p.add_argument("--z-dim", type=int, default=100, help="latent size (the paper's 100)")
    p.add_argument(
        "--g-ch", type=int, default=64, help="G width: channels of the last hidden layer"
    )
    p.add_argument("--d-ch", type=int, default=64, help="D width: channels of the first layer")
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        sys.exit(f"{MODEL}: error: {e}")
