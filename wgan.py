"""WGAN: "Wasserstein GAN", Martin Arjovsky, Soumith Chintala, Leon Bottou, 2017. arXiv:1701.07875.
WGAN-GP: "Improved Training of Wasserstein GANs", Ishaan Gulrajani, Faruk Ahmed, Martin Arjovsky,
Vincent Dumoulin, Aaron Courville, 2017. arXiv:1704.00028.

Paper -> code
- a critic f (no sigmoid) trained to maximise E[f(x)] - E[f(G(z))], the Kantorovich-Rubinstein
  dual of the Wasserstein-1 distance; G minimises -E[f(G(z))] (WGAN eq. 3, Alg. 1) -> loss_d, loss_g
- n_critic = 5 critic updates, each on a fresh real batch, per G update (both Alg. 1) -> train
- --constraint clip: f kept K-Lipschitz by clipping every critic weight to [-c, c], c = 0.01,
  after each critic step; RMSprop, lr 5e-5 (WGAN Alg. 1, sec. 3)        -> clip_weights, train
- --constraint gp (default): lambda E[(||grad f(x_hat)||_2 - 1)^2] on x_hat = eps x + (1-eps) G(z),
  eps ~ U[0, 1] per sample, the norm per sample over C*H*W, lambda 10; Adam, lr 1e-4,
  betas (0, 0.9) (WGAN-GP eq. 3, Alg. 1)                             -> gradient_penalty, train
- no BatchNorm in the critic: the penalty is per sample, and batch statistics would couple the
  samples; layer normalization instead (WGAN-GP sec. 4)                 -> Discriminator
- G and the critic's convolutions: the DCGAN architecture both papers use at 64x64 -> Generator

Not from the paper: what changes results
- The critic's LayerNorm is nn.GroupNorm(1, C): mean and variance per sample over (C, H, W), a
  gain and bias per channel, as in the WGAN-GP code. It is used with either constraint (WGAN's
  own DCGAN critic had BatchNorm); under clip its gain and bias are clipped like every other
  critic parameter, as the WGAN code clips all of them.
- WGAN's code also runs 100 critic steps for the first 25 generator steps and every 500th; not in
  Alg. 1, left out.
- DCGAN's weight init N(0, 0.02) and z ~ N(0, I). Samples come from G_ema, a moving average of
  G's weights (half-life --ema-kimg, ramped up over the first 20x as many images, as StyleGAN2-ADA
  does).
- Defaults: batch 64 (both papers), 20k generator steps (100k critic batches), widths 64.
Not from the paper: engineering
- The penalty runs in fp32 with autocast off, on the eager critic even under --compile
  (torch.compile has no double backward).
- kimg and img/s count generator images (step x batch); the critic sees n_critic times as many
  real images. loss_D, wdist and gp in the log are from the last critic step of each step.
- bf16 autocast on GPUs, DDP, atomic checkpoints, resume: the plumbing block, as in every file.
- Reads martinarjovsky/WassersteinGAN's generator files (netG_epoch_N.pth: DCGAN_G, the same
  network as Generator) for --sample and --init; not its critic files, whose BatchNorm is layer
  normalization here (above): --init starts the critic anew         -> read_wgan_dcgan

Usage
    python wgan.py                                    # built-in toy faces, 64x64, gradient penalty
    python wgan.py --data ./faces                     # any folder or .zip of images
    python wgan.py --constraint clip                  # the original WGAN: weight clipping, RMSprop
    python wgan.py --res 32 --steps 100 --batch 32 --g-ch 16 --d-ch 16   # CPU smoke run
    python wgan.py --data ./faces --resume --steps 30000   # continue out/wgan-faces
    torchrun --nproc_per_node=4 wgan.py --data ./faces
    python wgan.py --sample out/wgan-faces/ckpt.pt --n 64 [--interp]
    python wgan.py --sample netG_epoch_24.pth         # WassersteinGAN's DCGAN generator files
    python wgan.py --data ./faces --init netG_epoch_24.pth     # its G; the critic starts anew
"""

import argparse
import contextlib
import copy
import io
import json
import math
import os
import re
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import Batches, UserError, load_images, make_grid, save_gif, save_grid, save_samples

MODEL = "wgan"


# --- model --------------------------------------------------------------------------------------


def check_res(res):
    if res < 32 or res & (res - 1):
        raise UserError(f"{MODEL} builds power-of-two resolutions from 32 up; got --res {res}")


class Generator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res): DCGAN's generator. Channels halve as the
    resolution doubles."""

    def __init__(self, res=64, z_dim=100, ch=64):
        super().__init__()
        self.res, self.z_dim = res, z_dim
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        c = min(ch * 2 ** (n_up - 1), ch * 16)
        layers = [nn.ConvTranspose2d(z_dim, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(n_up - 1):  # (B, c, s, s) -> (B, c/2, 2s, 2s)
            up = nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False)
            layers += [up, nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        # (B, z_dim) -> (B, z_dim, 1, 1) -> (B, c, 4, 4) -> ... -> (B, 3, res, res)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """The critic: image (B, 3, res, res) -> score (B,), unbounded. DCGAN's convolutions, with
    layer normalization (GroupNorm with one group) where DCGAN has BatchNorm (WGAN-GP sec. 4)."""

    def __init__(self, res=64, ch=64):
        super().__init__()
        n_down = int(math.log2(res)) - 2  # res -> 4x4
        layers, c = [nn.Conv2d(3, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)], ch
        for _ in range(n_down - 1):  # (B, c, s, s) -> (B, 2c, s/2, s/2), at most 16 * ch
            c2 = min(c * 2, ch * 16)
            down = nn.Conv2d(c, c2, 4, 2, 1, bias=False)
            layers += [down, nn.GroupNorm(1, c2), nn.LeakyReLU(0.2)]
            c = c2
        layers += [nn.Conv2d(c, 1, 4, 1, 0, bias=False)]  # (B, c, 4, 4) -> (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()  # (B,)


def init_weights(m):  # DCGAN sec. 4: weights from N(0, 0.02), as the WGAN code does
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# --- losses -------------------------------------------------------------------------------------


def loss_d(logits_real, logits_fake):
    """Critic: minimise -(E[f(x)] - E[f(G(z))]), the negated Wasserstein estimate (WGAN Alg. 1)."""
    return logits_fake.mean() - logits_real.mean()


def loss_g(logits_fake):
    """G: minimise -E[f(G(z))] (WGAN Alg. 1)."""
    return -logits_fake.mean()


def gradient_penalty(D, x_real, x_fake):
    """E[(||grad_x f(x_hat)||_2 - 1)^2], x_hat = eps x_real + (1 - eps) x_fake, eps ~ U[0, 1] per
    sample (WGAN-GP eq. 3): a soft 1-Lipschitz constraint along lines between the two
    distributions, where the optimal critic has gradient norm 1 (sec. 3, Prop. 1). The norm is per
    sample over C*H*W. fp32 with autocast off; D must be the eager module (the penalty is
    backpropagated through a gradient, and torch.compile has no double backward)."""
    with torch.autocast(x_real.device.type, enabled=False):
        x_real, x_fake = x_real.detach().float(), x_fake.detach().float()
        eps = torch.rand(x_real.shape[0], 1, 1, 1, device=x_real.device)  # (B, 1, 1, 1)
        x_hat = torch.lerp(x_fake, x_real, eps).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x_hat).float().sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).square().mean()  # (B, C*H*W) -> (B,) -> ()


@torch.no_grad()
def clip_weights(D, c):
    """WGAN's Lipschitz constraint (sec. 3, Alg. 1 line 7): every critic parameter into [-c, c]."""
    for p in D.parameters():
        p.clamp_(-c, c)


# --- training -----------------------------------------------------------------------------------


def ema_beta(batch, ema_kimg):
    """Per-step decay whose half-life is ema_kimg thousand images."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


def ema_half_life(step, args):
    """--ema-kimg, ramped up: at most --ema-rampup of the thousands of images seen by `step`
    (StyleGAN2-ADA's ramp), so early G_ema follows G closely; --ema-rampup 0: no ramp-up."""
    seen = step * args.batch / 1000
    return min(args.ema_kimg, seen * args.ema_rampup) if args.ema_rampup else args.ema_kimg


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (BN statistics) are copied."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def train(args):
    check_res(args.res)
    run = Run(args)  # device, precision, DDP, seed, --resume: the plumbing block below
    args, device = run.args, run.device
    data = load_images(args.data, args.res, verbose=run.rank == 0)
    batches = Batches(
        data, args.batch // run.world, device, args.seed, run.rank, run.world, args.flip
    )
    G = Generator(args.res, args.z_dim, args.g_ch).to(device)
    D = Discriminator(args.res, args.d_ch).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if args.constraint == "gp":  # WGAN-GP Alg. 1: Adam, alpha 1e-4, beta1 0, beta2 0.9
        opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.9))
        opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.9))
    else:  # WGAN sec. 3: momentum (Adam) made training unstable under clipping, RMSprop did not
        opt_G = torch.optim.RMSprop(G.parameters(), lr=args.lr_g)
        opt_D = torch.optim.RMSprop(D.parameters(), lr=args.lr_d)
    run.track(G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D, loader=batches)  # --resume loads
    scaler_G, scaler_D = run.scaler_G, run.scaler_D  # fp16 loss scaling (no-ops in bf16, fp32)
    G_train, D_train = run.wrap(G, D)  # DDP under torchrun, torch.compile with --compile
    z_fixed = sample_z(64, args.z_dim, torch.Generator().manual_seed(args.seed)).to(device)
    if args.constraint == "gp":
        about = f"gradient penalty, lambda {args.gp_lambda}"
    else:
        about = f"weights clipped to [-{args.clip}, {args.clip}]"
    about = f"{len(data.labels)} images, {about}, n_critic {args.n_critic}"

    for step in run.steps(grid=lambda: G_ema(z_fixed), about=about):
        # (1) n_critic critic updates, each on a fresh real batch and z (WGAN Alg. 1, lines 2-8;
        # WGAN-GP Alg. 1, lines 2-10)
        for _ in range(args.n_critic):
            x_real, _ = next(batches)  # (B, 3, res, res) in [-1, 1]
            x_real = x_real.contiguous(memory_format=run.layout)
            z = torch.randn(x_real.shape[0], args.z_dim, device=device)
            with torch.no_grad(), run.autocast:
                x_fake = G_train(z)
            with run.autocast:
                logits_real, logits_fake = D_train(x_real).float(), D_train(x_fake).float()
            # maximise E[f(x)] - E[f(G(z))] (WGAN eq. 3); its value estimates W(P_r, P_g)
            loss_D = loss_d(logits_real, logits_fake)
            extra = {"wdist": -loss_D.detach()}
            if args.constraint == "gp":
                # + lambda (||grad f(x_hat)||_2 - 1)^2 (WGAN-GP eq. 3, Alg. 1 lines 4-7). D, not
                # D_train: the eager, unwrapped critic. Its gradients land in the same .grad
                # tensors as D_train's in the one backward below, so DDP still averages them.
                extra["gp"] = gradient_penalty(D, x_real, x_fake)
                loss_D = loss_D + args.gp_lambda * extra["gp"]
            opt_D.zero_grad(set_to_none=True)
            scaler_D.scale(loss_D).backward()
            scaler_D.step(opt_D)
            scaler_D.update()
            if args.constraint == "clip":
                clip_weights(D, args.clip)  # w <- clip(w, -c, c) (WGAN Alg. 1, line 7)

        # (2) update G: minimise -E[f(G(z))] on a fresh z (WGAN Alg. 1, lines 9-11; WGAN-GP 11-12)
        z = torch.randn(x_real.shape[0], args.z_dim, device=device)
        with run.autocast:
            loss_G = loss_g(D_train(G_train(z)).float())
        opt_G.zero_grad(set_to_none=True)
        scaler_G.scale(loss_G).backward()
        scaler_G.step(opt_G)
        scaler_G.update()

        update_ema(G_ema, G, ema_beta(args.batch, ema_half_life(step, args)))
        # loss_D, wdist and gp: the last critic update's, averaged over the log interval
        run.log(loss_D=loss_D, loss_G=loss_G, **extra)
    return G_ema


# --- sampling -----------------------------------------------------------------------------------


def sample_z(n, z_dim, gen, truncation=None):
    """z ~ N(0, I); with truncation T, entries beyond |T| are redrawn until none are left."""
    z = torch.randn(n, z_dim, generator=gen)
    while truncation is not None and (bad := z.abs() > truncation).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    return z


ARCH = ("res", "z_dim", "g_ch", "d_ch")  # the arguments that shape G and D


def read_weights(path, device="cpu"):
    """A checkpoint of this file, or a martinarjovsky/WassersteinGAN generator file
    (read_wgan_dcgan), as {"args": the sizes the file holds (ARCH), "G", "D", "G_ema"}: what
    load_generator and --init read. Torch files only, weights_only=True."""
    found = read_torch(path, device)
    if isinstance(found, dict) and "model" in found:
        ckpt = load_checkpoint(path, device)
        return dict(ckpt, args={k: ckpt["args"][k] for k in ARCH})
    return read_wgan_dcgan(path, found)


def read_wgan_dcgan(path, sd):
    """WassersteinGAN main.py's DCGAN_G (netG_epoch_N.pth): an nn.Sequential `main` of named layers
    (initial:100-512:convt, initial:512:batchnorm, pyramid:512-256:convt, ..., final:64-3:convt),
    which are our net.0, net.1, net.3, net.4, ..., in order. Sizes from the shapes: res from the
    number of convolutions, z_dim and g_ch from the first and last; --d-ch from the command line.
    It keeps no G_ema. Its critic (netD_epoch_N.pth) is refused: see the module docstring."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()} if isinstance(sd, dict) else {}
    layer = r"main\.(initial|pyramid|extra-layers-\d+|final):[\d-]+:(\w+)\.\w+"
    kinds = {m[2] if (m := re.fullmatch(layer, k)) else None for k in sd}
    if not sd or None in kinds:
        raise UserError(f"{path} is not a {MODEL} checkpoint nor a WassersteinGAN netG file")
    if "convt" not in kinds:
        why = f"{MODEL}.py's critic has layer normalization where it has BatchNorm: pass its netG"
        raise UserError(f"{path} is WassersteinGAN's critic, which is not read: {why}")
    if "conv" in kinds or "batchnorm" not in kinds:
        raise UserError(
            f"{path}: trained with --n_extra_layers or --noBN; {MODEL}.py's G has neither"
        )
    modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in sd))  # in the layers' order
    at = {m: 3 * (j // 2) + j % 2 for j, m in enumerate(modules)}  # convt, batchnorm, (ReLU), ...
    ours = {f"net.{at[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in sd.items()}
    convs = [v for k, v in sd.items() if k.endswith("convt.weight")]
    a = dict(res=4 * 2 ** (len(convs) - 1), z_dim=convs[0].shape[0], g_ch=convs[-1].shape[0])
    try:
        Generator(a["res"], a["z_dim"], a["g_ch"]).load_state_dict(ours)
    except RuntimeError as e:  # e.g. not RGB, or wider than 16 g_ch: the first line that differs
        why = next((t.strip() for t in str(e).splitlines()[1:] if t.strip()), str(e))
        raise UserError(f"{path}: its G is not a network {MODEL}.py builds ({why})") from None
    return dict(args=a, G=ours, D=None, G_ema=None)


def load_generator(path, device="cpu"):
    """Checkpoint -> G_ema (G where it has none) in eval mode, with .res and .z_dim for
    generate()."""
    a = (ckpt := read_weights(path, device))["args"]
    G = Generator(a["res"], a["z_dim"], a["g_ch"]).to(device)
    G.load_state_dict(ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"])  # no EMA: G
    return G.eval().requires_grad_(False)


@torch.no_grad()
def generate(G, n, seed=0, truncation=None, y=None):
    """n images in [-1, 1], (n, 3, res, res) float32 on the CPU; the same seed, the same images.
    truncation: a bound on |z| (entries beyond it are redrawn). y is ignored (unconditional)."""
    z = sample_z(n, G.z_dim, torch.Generator().manual_seed(seed), truncation)
    device = next(G.parameters()).device
    return torch.cat([G(z[i : i + 256].to(device)).float().cpu() for i in range(0, n, 256)])


@torch.no_grad()
def interpolation_frames(G, n, seed=0, truncation=None, y=None, keys=4, steps=16):
    """Frames of n images, each moving on a great circle through `keys` latents and back."""
    gen, device = torch.Generator().manual_seed(seed), next(G.parameters()).device
    zs, frames = [sample_z(n, G.z_dim, gen, truncation) for _ in range(keys)], []
    for a, b in zip(zs, zs[1:] + zs[:1]):
        cos = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True)
        omega = torch.arccos(cos.clamp(-1, 1)).clamp_min(1e-6)  # (n, 1): the angle a to b
        for t in torch.linspace(0, 1, steps + 1)[:-1]:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
            frames.append(make_grid(G(z.to(device)).float().cpu()))
    return frames


def sample(args):
    G = load_generator(args.sample, setup_device(args.device)[0])
    tag = f"seed{args.seed}" + (f"_trunc{args.truncation:g}" if args.truncation is not None else "")
    folder = os.path.dirname(args.sample)
    if args.interp:
        frames = interpolation_frames(G, args.n, args.seed, args.truncation)
        path = save_gif(frames, os.path.join(folder, f"interp_{tag}.gif"))
    else:
        images = generate(G, args.n, args.seed, args.truncation)
        path = save_grid(images, os.path.join(folder, f"samples_{tag}.png"))
    print(path)


# bf16 on a CPU: channels_last measured faster for this model's G and D step, 64x64 (fp32 NCHW = 1x:
# 1.74x vs 1.66x; README, CPU table). fp32 stays NCHW on a CPU: the same numbers as before
CPU_CHANNELS_LAST = True


# --- plumbing: the same in every model file (a test checks); skip it on a first read -------------


class Run:
    """Device, precision, DDP, seeding and resume; `for step in run.steps(grid, about)` yields each
    step, then logs, writes grids and checkpoints, saves on Ctrl-C, and stops on NaN/inf."""

    def __init__(self, args):
        self.args, self.ckpt = start_or_resume(args)
        self.device, self.rank, self.world = setup_device(self.args.device)
        self.say = print if self.rank == 0 else (lambda *text, **kw: None)
        self.precision, self.why = choose_precision(self.args.precision, self.device)
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.autocast = torch.autocast(self.device.type, dtype, enabled=dtype is not None)
        # channels_last: convolutions without layout transposes, on tensor cores (CUDA) or in
        # oneDNN's bf16 kernels (a CPU in bf16, where this model measured faster: CPU_CHANNELS_LAST)
        cpu_bf16 = self.device.type == "cpu" and self.precision == "bf16"
        fast = is_cuda(self.device) or (cpu_bf16 and CPU_CHANNELS_LAST)
        self.layout = torch.channels_last if fast else torch.contiguous_format
        # one GradScaler per optimizer: fp16 needs loss scaling, bf16 and fp32 do not
        fp16 = self.precision == "fp16"
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if self.args.batch % self.world:
            raise UserError(f"--batch {self.args.batch} must divide by {self.world} processes")
        torch.manual_seed(self.args.seed + self.rank)
        self.step, self.state, self.sums, self.n, self.signum = 0, {}, {}, 0, None
        self.agreed = False  # every rank stops at this step: the last one, Ctrl-C or NaN/inf

    def track(self, **state):
        """What a checkpoint holds besides args, step and RNG: objects with a state_dict, tensors,
        and values that must match on resume (class names, given first). --resume loads them."""
        self.state = dict(state, scaler_G=self.scaler_G, scaler_D=self.scaler_D)
        ckpt, self.ckpt = self.ckpt or {}, None  # loaded here, not kept for the whole run
        if "init" in ckpt:
            ckpt = self.start_from(ckpt)
        for k, v in self.state.items() if ckpt else ():
            if hasattr(v, "load_state_dict"):
                v.load_state_dict(ckpt[k])
            elif torch.is_tensor(v):
                v.copy_(ckpt[k])
            elif v != ckpt[k]:
                raise UserError(f"this run's {k} are {v}; {self.args.out} was trained on {ckpt[k]}")
        if ckpt:
            self.step = ckpt["step"]
            self.say(f"resuming {self.args.out}/ckpt.pt at step {self.step}/{self.args.steps}")
        rng = ckpt["rng"][self.rank] if ckpt and len(ckpt["rng"]) == self.world else None
        if rng:  # each process continues its own noise (with another number of them: new noise)
            torch.set_rng_state(rng["cpu"].cpu())
            if is_cuda(self.device) and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        for m in state.values():
            if isinstance(m, nn.Module):
                m.to(memory_format=self.layout)

    def start_from(self, weights):
        """--init: G, D and G_ema from the file (G_ema as its G where it has none, D as initialised
        where it has no D). Nothing else: the run starts at step 0. -> {} (nothing to resume)"""
        path, nets = weights["init"], dict(G=weights.get("G"), D=weights.get("D"))
        nets["G"] = nets["G"] if nets["G"] is not None else weights.get("G_ema")
        nets["G_ema"] = weights["G_ema"] if weights.get("G_ema") is not None else nets["G"]
        theirs, ours = weights.get("classes"), self.state.get("classes")
        if theirs is not None and ours is not None:  # a CSV's attributes: {name: count}
            if (theirs := class_sizes(theirs)) != (ours := class_sizes(ours)):
                raise UserError(f"{path} has {theirs} classes, this data {ours}")
        for k, sd in nets.items():
            try:
                sd is None or self.state[k].load_state_dict(sd)
            except RuntimeError as e:  # a shape that differs: the first line that says which
                why = next((s.strip() for s in str(e).splitlines()[1:] if s.strip()), str(e))
                raise UserError(f"--init {path}: its {k} does not fit this run ({why})") from None
        kept = ", ".join(k for k, sd in nets.items() if sd is not None)
        self.say(f"starting from {path}: {kept}" + ("" if nets["D"] else "; D as initialised"))
        return {}

    def wrap(self, *models, ddp=True):  # the modules as the step calls them
        models = [DDP(m) if ddp and self.world > 1 else m for m in models]
        return [torch.compile(m) if self.args.compile else m for m in models]

    def log(self, **values):  # summed on the device: nothing syncs until the log line
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def steps(self, grid, about):
        a, out = self.args, self.args.out
        n = {k: sum(p.numel() for p in self.state[k].parameters()) / 1e6 for k in "GD"}
        self.say(
            f"{MODEL} | {a.data} at {a.res}x{a.res}: {about} | G {n['G']:.2f}M D {n['D']:.2f}M"
            f" params | {self.device} {self.precision} ({self.why}) | batch {a.batch} on {self.world}"
            f" process(es) | out {out}"
        )
        main = threading.current_thread() is threading.main_thread()  # handlers only there
        old = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM) if main}
        self.t_log, self.step_log = time.time(), self.step
        try:
            os.makedirs(f"{out}/samples", exist_ok=True)
            while self.step < a.steps:
                yield self.step
                self.step = step = self.step + 1
                if step % a.log_every == 0 or step == a.steps:
                    self.write_log()
                t_pause = time.time()  # grids and checkpoints are left out of img/s
                if sample_due(step, a) and self.rank == 0:
                    with torch.no_grad():
                        save_samples(out, step, grid())
                if (self.world == 1 or step % 10 == 0) and any_rank(self.signum, self.device):
                    self.agreed = True
                    self.save()
                    self.say(f"stopped at step {step}: saved {out}/ckpt.pt; continue with --resume")
                    raise SystemExit(130 if self.signum == signal.SIGINT else 143)
                if step % a.ckpt_every == 0 or step == a.steps:
                    self.save()
                self.t_log += time.time() - t_pause
            self.agreed = True
        except OSError as e:  # a full disk, a folder without write permission
            raise UserError(f"could not write {e.filename}: {e.strerror}; {self.kept()}") from None
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if dist.is_initialized():
                # a process that exits while the others still exchange its last collective (the
                # checkpoint's all_gather) can abort at exit: all meet first, if all got here
                if self.agreed:
                    dist.barrier()
                dist.destroy_process_group()
        self.say(f"done: {out}/ckpt.pt, samples in {out}/samples, loss curve {out}/loss.png")

    def write_log(self):  # means since the last line, img/s, memory, eta: stdout and log.jsonl
        self.check_finite()  # the GPU syncs here, on log steps only
        a, now = self.args, time.time()
        rec = dict(step=self.step, steps=a.steps, kimg=self.step * a.batch / 1000)
        rec |= zip(self.sums, torch.stack([*self.sums.values()]).div(self.n).tolist())
        rec["img_s"] = (self.step - self.step_log) * a.batch / max(now - self.t_log, 1e-9)
        if is_cuda(self.device):
            rec["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        rec["eta_s"] = (a.steps - self.step) * a.batch / max(rec["img_s"], 1e-9)
        self.sums, self.n, self.t_log, self.step_log = {}, 0, now, self.step
        self.say(log_line(rec), flush=True)
        if self.rank == 0:
            with naming(f"{a.out}/log.jsonl") as path, open(path, "a") as f:
                f.write(json.dumps(dict(rec, time=now)) + "\n")

    def on_signal(self, signum, frame):  # a second Ctrl-C stops at once
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def check_finite(self):  # losses since the last log line and all weights, on every rank
        nets = [m for m in self.state.values() if isinstance(m, nn.Module)]
        tensors = [*self.sums.values(), *(p for m in nets for p in m.parameters())]
        if any_rank(not torch.stack([t.isfinite().all() for t in tensors]).all(), self.device):
            self.agreed = True
            why = f"loss or weights became NaN/inf by step {self.step}"
            raise UserError(f"{why}; stopped without saving ({self.kept()})")

    def kept(self):  # for an error: where the last good checkpoint is
        path = f"{self.args.out}/ckpt.pt"
        return f"the last good checkpoint is {path}" if os.path.exists(path) else "none was saved"

    def save(self):  # all ranks give their RNG state; rank 0 writes a temporary file, renamed
        self.check_finite()
        rng = {"cpu": torch.get_rng_state()}
        if is_cuda(self.device):
            rng["cuda"] = torch.cuda.get_rng_state(self.device).cpu()
        rngs = [rng] * self.world
        if dist.is_initialized():
            dist.all_gather_object(rngs, rng)
        ckpt = dict(model=MODEL, args=vars(self.args), step=self.step, rng=rngs)
        for k, v in self.state.items():
            ckpt[k] = v.state_dict() if hasattr(v, "state_dict") else v
        path = f"{self.args.out}/ckpt.pt"
        if self.rank == 0:
            data = io.BytesIO()  # serialised first: a full disk then fails in a plain write
            torch.save(ckpt, data)
            try:
                with naming(path), open(path + ".tmp", "wb") as f:
                    f.write(data.getbuffer())
                    os.fsync(f.fileno())
                os.replace(path + ".tmp", path)
            finally:  # no partial file is left; the last good ckpt.pt stays
                if os.path.exists(path + ".tmp"):
                    os.remove(path + ".tmp")


def is_cuda(device):  # every CUDA-only line asks this first (tests fake CUDA through it)
    return device.type == "cuda"


@contextlib.contextmanager
def naming(path):  # an OSError inside names `path` (a full disk's names no file)
    try:
        yield path
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def setup_device(name):
    """auto: cuda, else mps, else cpu. cuda: cuda:LOCAL_RANK under torchrun (with DDP), else 0."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = check_device(name, int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else None)
    if is_cuda(device):
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True  # TF32 convolutions
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        nccl = device.type == "cuda"
        dist.init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None)
    return device, rank, world


def choose_precision(asked, device):
    """--precision -> (fp32, bf16 or fp16; why, for the start line). auto: bf16 where autocast has
    native bf16 kernels (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, as torch
    reports it), else fp32. bf16 asked on a CPU without them runs emulated: slower than fp32."""
    if is_cuda(device):
        native, where = torch.cuda.is_bf16_supported(), "this GPU"
    else:  # oneDNN's bf16 kernels need AVX512-BF16 or AMX tiles: torch.cpu's own probes
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = device.type == "cpu" and any(getattr(torch.cpu, p, bool)() for p in probes)
        where = f"this {device.type.upper()}"
    if asked == "auto":
        has = "has" if native else "has no"
        return ("bf16" if native else "fp32"), f"auto: {where} {has} native bf16"
    if asked == "bf16" and device.type == "cpu" and not native:
        return asked, f"{where} has no native bf16: emulated, slower than fp32"
    return asked, "as asked"


def check_device(name, local_rank=None):
    """The torch.device for a --device value (local_rank: under torchrun); one that this machine
    lacks is a UserError, for the command line and load_generator alike."""
    name, msg = str(name), f"--device {name}:"
    if name == "auto":
        name = "mps" if torch.backends.mps.is_available() else "cpu"
        name = "cuda" if torch.cuda.is_available() else name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{msg} unknown device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{msg} this machine has no MPS (Apple GPU) backend")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{msg} this machine has no CUDA GPU (or torch was built without CUDA)")
        if local_rank is not None and device.index not in (None, local_rank):
            raise UserError(f"{msg} under torchrun each process uses cuda:LOCAL_RANK; use cuda")
        index = (device.index or 0) if local_rank is None else local_rank
        if index >= (count := torch.cuda.device_count()):
            raise UserError(f"{msg} cuda:{index} does not exist ({count} GPU(s))")
        device = torch.device("cuda", index)
    return device


def start_or_resume(args):
    """Refuse to overwrite a run. With --resume, the arguments come from the checkpoint except
    --out and the resumable ones typed on the command line (args.typed, from parse_args)."""
    resumable = "data steps device compile log_every sample_every ckpt_every".split()
    typed, path = set(vars(args).pop("typed", ())) - {"out", "resume"}, f"{args.out}/ckpt.pt"
    if os.path.exists(path) and not args.resume:
        raise UserError(f"{path} exists: pass --resume to continue it or choose another --out")
    if args.init and args.resume:
        raise UserError("--init starts a new run and --resume continues one: choose one")
    if not args.resume:
        return (args, None) if args.init is None else init_from(args, typed)
    ckpt, flag = load_checkpoint(path), lambda k: "--" + k.replace("_", "-")
    saved, can = ckpt["args"], ", ".join(map(flag, resumable))
    for k in sorted(typed - set(resumable)):
        if k not in saved:  # a flag newer than the run (which has its default)
            raise UserError(
                f"{flag(k)}: {path} is from before that flag; on --resume only {can} can change"
            )
        if getattr(args, k) != saved[k]:
            was = f"differs from the run's {saved[k]}; on --resume only {can} can change"
            raise UserError(f"{flag(k)} {getattr(args, k)} {was}")
    kept = {k: v for k, v in saved.items() if k not in typed | {"out", "resume"}}
    given = ", ".join(f"{k}={getattr(args, k)}" for k in sorted(typed)) or "nothing"
    kept_text = ", ".join(f"{k}={v}" for k, v in kept.items())
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"resume: from the command line: {given}; from the checkpoint: {kept_text}")
    return argparse.Namespace(**(vars(args) | kept)), ckpt


def class_sizes(classes):  # a class count, or {attribute: count} for several attributes
    return {k: len(v) for k, v in classes.items()} if isinstance(classes, dict) else len(classes)


def init_from(args, typed):
    """--init FILE: the networks' sizes from FILE (one typed otherwise is refused) and their
    weights, which Run.track loads; steps, optimizers and data start anew."""
    weights = read_weights(args.init)
    for k, v in weights["args"].items():
        if k in typed and getattr(args, k) != v:
            flag = "--" + k.replace("_", "-")
            raise UserError(f"{flag} {getattr(args, k)} differs from {args.init}'s {v}: drop it")
        setattr(args, k, v)
    return args, dict(weights, init=args.init)


def read_torch(path, device="cpu", allow=()):
    """torch.load with weights_only=True: tensors, plain containers and the torch classes in
    `allow` (rebuilt from their saved state); nothing in the file runs. A missing or unreadable
    file, or a global that weights_only refuses, is one line that says which."""
    device = check_device(device)  # an absent GPU is said as such, not as an unreadable file
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))  # weights_only names what it refused
        if refused:
            why = f"refused global {refused[1]}; nothing in the file was run"
            raise UserError(f"{path}: {why}") from None
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None


def load_checkpoint(path, device="cpu"):
    ckpt = read_torch(path, device)
    found = ckpt.get("model") if isinstance(ckpt, dict) else None
    if found != MODEL:
        raise UserError(f"{path} is not a {MODEL} checkpoint (model: {found})")
    return ckpt


def leave(status):
    """sys.exit(status); under torchrun os._exit, once everything is written. torch 2.13's DDP
    keeps the gloo process group's worker threads alive after destroy_process_group; one that
    releases the last collective's tensors while Python shuts down needs the interpreter, which
    ends the thread, and the C++ runtime aborts the process (SIGABRT, 'terminate called without
    an active exception') after a run that finished. os._exit skips that shutdown."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if isinstance(status, str) else status or 0)


def any_rank(flag, device):  # all ranks call it together; one process: no tensor, no GPU sync
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor(float(bool(flag)), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sample_due(step, args):
    """A grid every --sample-every steps and at the end; before the first of those, also at steps
    10, 20, 40, 80, ..., so that a new run shows a picture within seconds."""
    early = step < args.sample_every and step % 10 == 0 and (k := step // 10) & (k - 1) == 0
    return step % args.sample_every == 0 or step == args.steps or early


def log_line(rec):
    """step 1200/50000 | kimg 76.8 | loss_D 1.213 | ... | 512 img/s | 1.9 GB | eta 2h41m"""
    h, m = divmod(int(rec["eta_s"]) // 60, 60)
    skip = ("step", "steps", "kimg", "img_s", "mem_gb", "eta_s", "time")
    parts = [f"step {rec['step']}/{rec['steps']}", f"kimg {rec['kimg']:.1f}"]
    parts += [f"{k} {v:.4g}" for k, v in rec.items() if k not in skip]
    parts += [f"{rec['img_s']:.0f} img/s"]
    parts += [f"{rec['mem_gb']:.2f} GB"] if "mem_gb" in rec else []
    return " | ".join(parts + [f"eta {h}h{m:02d}m" if h or m else f"eta {int(rec['eta_s'])}s"])


# --- command line: the shared flags, the same in every model file, then this model's own --------


def positive(kind, off=False):  # an argparse type: an int or a finite float above 0 (or 0: off)
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not (0 <= value if off else 0 < value) or value == math.inf:
            what = ("0 (off) or " if off else "") + ("an integer" if kind is int else "a number")
            raise argparse.ArgumentTypeError(f"must be {what} above 0, got {text!r}")
        return value

    return parse


class Help(argparse.ArgumentDefaultsHelpFormatter):  # each default once; none for None or off
    def _get_help_string(self, action):
        said = action.default is None or action.default is False or "default" in action.help
        return action.help if said else super()._get_help_string(action)


def shared_flags(
    about, steps, batch, lr_g, lr_d, ema_kimg, truncation, truncation_type=None, ema_rampup=0.05
):
    """The flags every model file has, with this model's defaults (its recommended 64x64 run)."""
    p = argparse.ArgumentParser(description=about, formatter_class=Help)
    add, pos_int, pos = p.add_argument, positive(int), positive(float)
    add("--data", default="toy", help="image folder (subfolders = classes), .zip, or toy")
    add("--res", type=int, default=64, help="image resolution (a power of two)")
    add(
        "--out",
        help=f"run folder: ckpt.pt, log.jsonl, samples/ (default out/{MODEL}-DATA, DATA the name"
        " of --data's folder or zip; --resume finds the run the same way)",
    )
    add("--steps", type=pos_int, default=steps, help="training steps (G updates)")
    add("--batch", type=pos_int, default=batch, help="global batch, split over processes")
    add("--lr-g", type=pos, default=lr_g, help="G learning rate")
    add("--lr-d", type=pos, default=lr_d, help="D learning rate")
    off = positive(float, off=True)
    add("--ema-kimg", type=off, default=ema_kimg, help="G_ema half-life in kimg (0: no EMA)")
    add(
        "--ema-rampup",
        type=off,
        default=ema_rampup,
        help="G_ema half-life at most this fraction of the images seen (0: no ramp-up)",
    )
    add("--seed", type=int, default=0, help="seed of weights, noise, data order and samples")
    add("--device", default="auto", help="auto (cuda, else mps, else cpu), or e.g. cuda:1")
    add(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto: bf16 where the GPU or CPU has native bf16 kernels, else fp32",
    )
    add("--compile", action="store_true", help="torch.compile G and D forward passes")
    add("--resume", action="store_true", help="continue the run in --out")
    add(
        "--init",
        metavar="FILE",
        help="a new run from these weights: a ckpt.pt or a reference implementation's file (README:"
        " Start from a trained model); sizes from FILE, step 0, new optimizers",
    )
    add("--log-every", type=pos_int, default=50, help="steps between log lines")
    add("--sample-every", type=pos_int, default=200, help="steps between sample grids")
    add("--ckpt-every", type=pos_int, default=1000, help="steps between checkpoints")
    add("--flip", action=argparse.BooleanOptionalAction, default=True, help="random x-flips")
    add("--sample", metavar="CKPT", help="sampling mode: a grid from this checkpoint's G_ema")
    add("--n", type=pos_int, default=64, help="sampling: number of images")
    add("--truncation", type=truncation_type or pos, help=f"sampling: {truncation}")
    add("--interp", action="store_true", help="sampling: a latent-interpolation GIF")
    return p


def parse_args(parser, argv=None):
    """A bad value exits with one line. args.typed: the arguments typed, for --resume."""
    parser.error = lambda message: sys.exit(f"{MODEL}: error: {message} (see --help)")
    args = parser.parse_args(argv)
    unset = object()  # argparse keeps a namespace's attribute unless it was typed
    seen = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))
    args.typed = sorted(k for k, v in vars(seen).items() if v is not unset)
    name = os.path.splitext(os.path.basename(os.path.abspath(args.data)))[0]
    args.out = args.out or f"out/{MODEL}-{name}"  # one folder per model and data, e.g. -toy
    return args


def get_args(argv=None):
    p = shared_flags(
        "WGAN (Arjovsky et al. 2017) and WGAN-GP (Gulrajani et al. 2017) for anime faces. "
        "--lr-g and --lr-d unset: 1e-4 (gp, Adam) or 5e-5 (clip, RMSprop).",
        steps=20000,
        batch=64,
        lr_g=None,
        lr_d=None,
        ema_kimg=10.0,
        truncation="redraw z entries beyond |T| (a bound on z)",
    )
    p.add_argument(
        "--z-dim", type=positive(int), default=100, help="latent size (DCGAN's 100, as in WGAN)"
    )
    p.add_argument("--g-ch", type=positive(int), default=64, help="G width: its last hidden layer")
    p.add_argument("--d-ch", type=positive(int), default=64, help="critic width: its first layer")
    p.add_argument(
        "--constraint",
        default="gp",
        choices=["gp", "clip"],
        help="the critic's Lipschitz constraint: gradient penalty (WGAN-GP) or clipping (WGAN)",
    )
    p.add_argument(
        "--n-critic", type=int, default=5, help="critic updates per generator update (n_critic)"
    )
    p.add_argument(
        "--gp-lambda", type=float, default=10.0, help="gradient-penalty weight (WGAN-GP's lambda)"
    )
    p.add_argument("--clip", type=float, default=0.01, help="WGAN's c: weights clipped to [-c, c]")
    args = parse_args(p, argv)
    lr = {"gp": 1e-4, "clip": 5e-5}[args.constraint]
    args.lr_g, args.lr_d = args.lr_g or lr, args.lr_d or lr
    return args


if __name__ == "__main__":
    args = get_args()
    try:
        sample(args) if args.sample else train(args)
    except UserError as e:
        leave(f"{MODEL}: error: {e}")
    except OSError as e:  # e.g. a sample grid on a full disk
        leave(f"{MODEL}: error: could not write {e.filename}: {e.strerror}")
    except SystemExit as e:  # stopped by Ctrl-C or SIGTERM, after saving: 130 or 143
        leave(e.code)
    leave(0)
