"""Conditional GAN: "Conditional Generative Adversarial Nets", Mehdi Mirza, Simon Osindero, 2014.
arXiv:1411.1784. On DCGAN's networks, with D conditioned by projection ("cGANs with Projection
Discriminator", Takeru Miyato, Masanori Koyama, 2018, arXiv:1802.05637) and a stabilisation
recipe for anime faces.

Paper -> code
- G and D both see the class y; G's input is z joined to y (sec. 3.2)           -> Generator
- D conditioned by projection, D(x, y) = psi(phi(x)) + embed(y) . phi(x)
  (Miyato & Koyama eq. 3), phi = D's last 4x4 features, psi = DCGAN's last conv -> Discriminator
- the conditional minimax game, G maximising log D(G(z|y)) (sec. 3.2, eq. 2)   -> loss_d, loss_g
Why projection rather than label maps concatenated to D's input: it is the form the optimal
D takes for a log-linear class model (Miyato & Koyama sec. 3), it beat concatenation on
ImageNet in their sec. 5, and it costs one embedding row per class instead of n_classes
extra input channels on every image (12 for anime_hair).

The recipe (each a flag; none of it is from Mirza & Osindero)
- instance noise N(0, sigma^2) on every image D sees, sigma falling linearly from --noise-std
  0.75 to 0 over --noise-kimg 1000, about half of the default run of 30k steps x 64 = 1920 kimg
  (Sonderby et al. 2016, arXiv:1610.04490; Arjovsky & Bottou 2017, arXiv:1701.04862 sec. 4)
                                                                                 -> noise_std, add_noise
- soft labels: D's real targets from U[0.95, 1], fake targets from U[0, 0.05] (Salimans et al.
  2016, arXiv:1606.03498 sec. 3.4; ganhacks tip 6)   --real-target, --fake-target -> smoothed_targets
- D sees a batch of reals, then a batch of fakes, in separate forward passes, so BatchNorm
  never mixes them (ganhacks tip 4); BatchNorm in G and D; LeakyReLU(--slope 0.1) in G and D
  (ganhacks tip 5); z ~ N(0, I)                                                 -> Generator, train()
- G learns more slowly than D: --lr-g 1e-4, --lr-d 2e-4
- an extra G step in an iteration whose loss_G exceeds --g-extra-threshold 2.0 (D(G(z)) below
  e^-2 = 0.14 on average; ganhacks tip 8). The loss is averaged over DDP ranks before the
  decision, so every rank takes the same branch                                  -> train()

Not from the paper
- Fakes take the labels of the real batch they are paired with: G sees the data's class
  frequencies (223 to 2,123 images per class in anime_hair) and needs no RNG of its own for y.
- D's class embedding starts like psi, N(0, 0.02); G's starts at N(0, 1), the scale of z.
  Embedding width --embed-dim 50 (sec. 3.2 of the paper maps y to 1000 units in an MLP).
- With data of a single class there is no embedding and no projection: the same recipe,
  unconditional.
- G_ema (half-life --ema-kimg), updated once per iteration; bf16 autocast, DDP, checkpoints:
  the skeleton shared by every file here.

Usage
    python cgan.py                                    # built-in toy faces (6 hair colours), 64x64
    python cgan.py --data ../shared/data/anime_hair --res 64   # class subfolders = labels
    python cgan.py --data toy --res 32 --steps 200 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python cgan.py --resume --steps 30000             # continue out/cgan/ckpt.pt
    torchrun --nproc_per_node=4 cgan.py --data ./faces
    python cgan.py --sample out/cgan/ckpt.pt --n 64 [--class blonde] [--interp]
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

MODEL = "cgan"


# --- model --------------------------------------------------------------------------------------


def check_res(res):
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")


class Generator(nn.Module):
    """(z (B, z_dim), y (B,)) -> image (B, 3, res, res). y enters as a learned embedding
    concatenated to z; with one class there is no embedding and y is ignored."""

    def __init__(self, res=64, z_dim=100, ch=64, n_classes=1, embed_dim=50, slope=0.1):
        super().__init__()
        self.res, self.z_dim, self.n_classes = res, z_dim, n_classes
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes > 1 else None
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        c = min(ch * 2 ** (n_up - 1), ch * 16)
        c_in = z_dim + (embed_dim if self.embed is not None else 0)
        layers = [
            nn.ConvTranspose2d(c_in, c, 4, 1, 0, bias=False),
            nn.BatchNorm2d(c),
            nn.LeakyReLU(slope, True),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.LeakyReLU(slope, True),
            ]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], 1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """(image (B, 3, res, res), y (B,)) -> logit (B,). No BatchNorm on the input layer (DCGAN sec. 3).
    Projection (Miyato & Koyama eq. 3): logit = psi(h) + embed(y) . h, h = the flattened 4x4
    features, psi = DCGAN's final 4x4 convolution (a linear map of h)."""

    def __init__(self, res=64, ch=64, n_classes=1, slope=0.1):
        super().__init__()
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        layers = [nn.Conv2d(3, ch, 4, 2, 1, bias=False), nn.LeakyReLU(slope, True)]
        c = ch
        for _ in range(n_down - 1):
            c2 = min(c * 2, ch * 16)
            layers += [
                nn.Conv2d(c, c2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c2),
                nn.LeakyReLU(slope, True),
            ]
            c = c2
        self.features = nn.Sequential(*layers)
        self.psi = nn.Conv2d(c, 1, 4, 1, 0, bias=False)
        self.embed = nn.Embedding(n_classes, c * 16) if n_classes > 1 else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)  # like psi, which maps the same h

    def forward(self, x, y=None):
        h = self.features(x)  # (B, c, 4, 4)
        logits = self.psi(h).flatten()
        if self.embed is not None:
            logits = logits + (self.embed(y) * h.flatten(1)).sum(1)
        return logits


def init_weights(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# --- losses and the recipe ----------------------------------------------------------------------


def smoothed_targets(n, lo, hi, device="cpu"):
    """Soft labels, one per sample from U[lo, hi]: D is never asked for a certain 0 or 1, which
    keeps its logits (and G's gradients through them) from growing without bound."""
    return torch.empty(n, device=device).uniform_(lo, hi)


def loss_d(logits_real, logits_fake, t_real, t_fake):
    """-t log D(x) - (1 - t) log(1 - D(x)) on the real batch plus the same on the fake batch, on logits."""
    return F.binary_cross_entropy_with_logits(
        logits_real, t_real
    ) + F.binary_cross_entropy_with_logits(logits_fake, t_fake)


def loss_g(logits_fake):
    """Non-saturating: G maximises log D(G(z)) instead of minimising log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def noise_std(kimg, start, over_kimg):
    """Instance noise sigma after `kimg` thousand real images: linear from `start` to 0 at `over_kimg`.
    Early on, the noise makes real and fake distributions overlap, so D's gradient is informative
    where they would otherwise have disjoint supports (Arjovsky & Bottou 2017 sec. 4)."""
    return start * max(0.0, 1.0 - kimg / over_kimg) if over_kimg > 0 else 0.0


def add_noise(x, sigma):
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


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


def fixed_latents(n_classes, z_dim, seed, per_class=8):
    """The training grids' inputs: one row per class, the same z down each column, so a row differs
    from the next only by its label. One class: an 8x8 grid of distinct z."""
    gen = torch.Generator().manual_seed(seed)
    if n_classes == 1:
        return sample_z(64, z_dim, gen), torch.zeros(64, dtype=torch.long)
    return sample_z(per_class, z_dim, gen).repeat(n_classes, 1), torch.arange(
        n_classes
    ).repeat_interleave(per_class)


def class_index(classes, key):
    """--class NAME_OR_INDEX -> label; a class name wins over an index."""
    if len(classes) == 1:
        raise UserError(
            "this checkpoint was trained unconditionally (its data had one class): drop --class"
        )
    if key in classes:
        return classes.index(key)
    if key.isdigit() and int(key) < len(classes):
        return int(key)
    raise UserError(
        f"unknown class {key!r}; classes: " + ", ".join(f"{i} {c}" for i, c in enumerate(classes))
    )


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
    G = Generator(
        a["res"], a["z_dim"], a["g_ch"], len(ckpt["classes"]), a["embed_dim"], a["slope"]
    ).to(device)
    G.load_state_dict(ckpt["G_ema"])
    G.classes = ckpt["classes"]
    return G.eval().requires_grad_(False)


def labels_for(G, n, y=None):
    """y as a (n,) label tensor; None -> torch.arange(n) % number of classes; an int -> that class."""
    return (
        torch.arange(n) % len(G.classes)
        if y is None
        else torch.as_tensor(y, dtype=torch.long).expand(n)
    )


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None, batch=256):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; same seed, same images.
    y: class labels, (n,) or one int; None cycles through the classes (torch.arange(n) % n_classes)."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    y = labels_for(G, n, y)
    device = next(G.parameters()).device
    return torch.cat(
        [
            G(z[i : i + batch].to(device), y[i : i + batch].to(device)).float().cpu()
            for i in range(0, n, batch)
        ]
    )


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, keys=4, steps=16, y=None):
    """Frames of n images, each moving along a spherical path through `keys` latents and back;
    each image keeps its label (y as in generate())."""
    gen = torch.Generator().manual_seed(seed)
    zs = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)]
    device, frames = next(G.parameters()).device, []
    y = labels_for(G, n, y).to(device)
    for k in range(keys):
        a, b = zs[k], zs[(k + 1) % keys]
        omega = torch.arccos(
            (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True).clamp(-1, 1)
        )
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(
                omega
            ).clamp_min(1e-6)
            frames.append(make_grid(G(z.to(device), y).float().cpu()))
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


def mean_over_ranks(t):
    """A scalar tensor averaged over all DDP ranks, as a float (syncs the GPU); all ranks call it together."""
    if dist.is_initialized():
        t = t.detach().float().clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.item()


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
    n_classes = len(data.classes)
    if ckpt is not None and ckpt["classes"] != data.classes:
        raise UserError(
            f"--data has classes {data.classes} but {args.out}/ckpt.pt was trained on {ckpt['classes']}"
        )

    G = Generator(args.res, args.z_dim, args.g_ch, n_classes, args.embed_dim, args.slope).to(device)
    D = Discriminator(args.res, args.d_ch, n_classes, args.slope).to(device)
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
    z_fixed, y_fixed = (t.to(device) for t in fixed_latents(n_classes, args.z_dim, args.seed))
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    say(
        f"{MODEL} | {args.data}: {len(data.labels)} images, {args.res}x{args.res} | "
        f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M "
        f"params | {device} {precision} | batch {args.batch} on {world} process(es) | out {args.out}"
    )
    if n_classes == 1:
        say(
            f"{MODEL}: the data has a single class: training unconditionally (no label embedding in G or D)"
        )
    else:
        say(
            f"{n_classes} classes, one per sample-grid row, top to bottom: {', '.join(data.classes)}"
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

    def g_step(x_fake, y, sigma):
        with autocast:
            loss_G = loss_g(D_train(add_noise(x_fake, sigma), y).float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(opt_G)
        scaler_G.update()
        return loss_G

    meter, stop, t_log, step_log = Meter(), StopFlag(), time.time(), step
    try:
        while step < args.steps:
            x_real, y_real = next(batches)
            x_real = x_real.contiguous(memory_format=layout)
            sigma = noise_std(step * args.batch / 1000, args.noise_std, args.noise_kimg)
            z = torch.randn(x_real.shape[0], args.z_dim, device=device)
            with autocast:
                x_fake = G_train(z, y_real)
                logits_real = D_train(add_noise(x_real, sigma), y_real)
                logits_fake = D_train(add_noise(x_fake.detach(), sigma), y_real)
                loss_D = loss_d(
                    logits_real.float(),
                    logits_fake.float(),
                    smoothed_targets(len(z), *args.real_target, device),
                    smoothed_targets(len(z), *args.fake_target, device),
                )
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(opt_D)
            scaler_D.update()

            loss_G = g_step(x_fake, y_real, sigma)
            # the branch must be the same on every rank (DDP all-reduces G's gradients inside it),
            # so it is taken on the loss averaged over ranks; the .item() costs one GPU sync a step
            extra = (
                math.isfinite(args.g_extra_threshold)
                and mean_over_ranks(loss_G) > args.g_extra_threshold
            )
            if extra:
                z = torch.randn(x_real.shape[0], args.z_dim, device=device)
                with autocast:
                    x_fake = G_train(z, y_real)
                g_step(x_fake, y_real, sigma)
            # the half-life ramps up to --ema-kimg over the first 20x as many images (StyleGAN2-ADA's
            # ema_rampup 0.05), so that early samples are not dominated by the initial weights
            update_ema(
                G_ema, G, ema_beta(args.batch, min(args.ema_kimg, 0.05 * step * args.batch / 1000))
            )
            step += 1
            meter.add(
                loss_D=loss_D,
                loss_G=loss_G,
                d_real=logits_real.mean(),
                d_fake=logits_fake.mean(),
                g_extra=torch.tensor(float(extra), device=device),
            )

            if step % args.log_every == 0 or step == args.steps:
                fail_if_not_finite()
                dt, rec = (
                    time.time() - t_log,
                    {"step": step, "steps": args.steps, "kimg": step * args.batch / 1000},
                )
                rec.update(meter.means())
                rec["noise"] = sigma
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
                        G_ema(z_fixed, y_fixed),
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
    folder, tag, y = os.path.dirname(args.sample) or ".", f"seed{args.seed}", None
    if args.class_name is not None:
        y = class_index(G.classes, args.class_name)
        tag += f"_{G.classes[y]}"
    if args.interp:
        path = save_gif(
            interpolation_frames(G, args.n, args.seed, args.truncation, y=y),
            os.path.join(folder, f"interp_{tag}.gif"),
        )
    else:
        path = save_grid(
            generate(G, args.n, args.seed, args.truncation, y),
            os.path.join(folder, f"samples_{tag}.png"),
        )
    print(path)


# --- command line -------------------------------------------------------------------------------


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description="Conditional GAN (Mirza & Osindero 2014) with a projection D and a "
        "stabilisation recipe, for anime faces with class subfolders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default="toy", help="image folder (subfolders = classes), .zip, or 'toy'"
    )
    p.add_argument("--res", type=int, default=64, help="image resolution (power of two, >= 32)")
    p.add_argument("--out", default=f"out/{MODEL}", help="run folder: ckpt.pt, log.jsonl, samples/")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=30000,
        help="iterations: one D step and one G step each (two G steps past --g-extra-threshold)",
    )
    p.add_argument(
        "--batch", type=positive_int, default=64, help="global batch, split across processes"
    )
    p.add_argument(
        "--lr-g", type=float, default=1e-4, help="generator Adam learning rate (below D's)"
    )
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
    p.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME_OR_INDEX",
        default=None,
        help="sampling mode: give every image this class (unset: the images cycle through the classes)",
    )
    p.add_argument("--z-dim", type=int, default=100, help="latent size (DCGAN's 100)")
    p.add_argument(
        "--g-ch", type=int, default=64, help="G width: channels of the last hidden layer"
    )
    p.add_argument("--d-ch", type=int, default=64, help="D width: channels of the first layer")
    p.add_argument(
        "--embed-dim", type=int, default=50, help="size of G's class embedding, joined to z"
    )
    p.add_argument("--slope", type=float, default=0.1, help="LeakyReLU negative slope in G and D")
    p.add_argument(
        "--noise-std",
        type=float,
        default=0.75,
        help="instance noise: starting std of the Gaussian noise added to every image D sees",
    )
    p.add_argument(
        "--noise-kimg",
        type=float,
        default=1000.0,
        help="instance noise: thousands of real images over which its std falls linearly to 0",
    )
    p.add_argument(
        "--real-target",
        type=float,
        nargs=2,
        default=[0.95, 1.0],
        metavar=("LO", "HI"),
        help="label smoothing: D's targets for real images are drawn from U[LO, HI]",
    )
    p.add_argument(
        "--fake-target",
        type=float,
        nargs=2,
        default=[0.0, 0.05],
        metavar=("LO", "HI"),
        help="label smoothing: D's targets for fake images are drawn from U[LO, HI]",
    )
    p.add_argument(
        "--g-extra-threshold",
        type=float,
        default=2.0,
        help="an extra G step in any iteration whose loss_G (mean over processes) exceeds this; "
        "inf: never",
    )
    return parse_args(p, argv)


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        sys.exit(f"{MODEL}: error: {e}")
