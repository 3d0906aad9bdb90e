"""By-hand check (issue 22): each model file's `read_weights` reads files written by the reference
project's own code, and our networks then compute what the reference's do.

Each subcommand builds tiny networks with the reference's code, imported (or, for pytorch/examples,
exec'd class by class) from the checkout given on the command line at run time, saves them in the
reference's own file format into a temporary folder, reads them with our <model>.read_weights and
prints the largest absolute and relative (max |ours - theirs| / max |theirs|) errors of G's (and
G_ema's) images and of D's logits for the same inputs. Nothing of another project's code or text is
in this file. The exit status is 1 if any relative error is above 1e-5.

    python check_references.py dcgan PATH/TO/examples                  # pytorch/examples
    python check_references.py wgan PATH/TO/WassersteinGAN             # martinarjovsky/WassersteinGAN
    python check_references.py biggan PATH/TO/BigGAN-PyTorch           # ajbrock/BigGAN-PyTorch
    python check_references.py stylegan2_ada PATH/TO/stylegan2-ada-pytorch  # NVlabs/...
    python check_references.py sagan PATH/TO/Self-Attention-GAN        # heykeetae/Self-Attention-GAN
    python check_references.py sngan PATH/TO/SNGAN-AnimeFace           # tqch/SNGAN-AnimeFace

- dcgan: dcgan/main.py's Generator, Discriminator and weights_init; netG/netD_epoch_N.pth.
- wgan: models/dcgan.py's DCGAN_G and DCGAN_D as main.py saves them (netG_epoch_N.pth beside
  generator_config.json); netD_epoch_N.pth must be refused in one line.
- biggan: BigGAN.py and utils.py (utils.save_weights: G.pth, D.pth, G_ema.pth, state_dict.pth);
  torchvision and h5py, which utils.py only names at import time, are stubbed.
- stylegan2_ada: training/networks.py through dnnlib, pickled as training/training_loop.py's
  network-snapshot-*.pkl, at three configurations; then our reading written as a TensorFlow
  (G, D, Gs) pickle (test_models.py's fixture writer), converted by the reference's legacy.py and
  read by us; last, one training step started from a real snapshot with --init and --freeze-d.
- sagan: sagan_models.py's Generator and Discriminator saved as trainer.py saves them (N_G.pth,
  N_D.pth), read as --arch heykeetae, in three cases; G's images and D's logits in eval mode (their
  first forward after loading) and in training mode; then --sample and --init on the files.
- sngan: sngan.py's NetG / NetD and utils.py's EMA, loaded by file, a few of their training steps
  (hinge and vanilla loss, blocks per stage (1,1,1,1), (2,2,2,2), (1,2,3,1)), saved as train.py's
  checkpoint dict and a bare netG, read as --arch tqch; then --sample and --init on the file.

No internet is needed beyond the checkout, but each checkout needs its own dependencies importable:
stylegan2-ada-pytorch its own torch_utils and dnnlib (in the checkout) and numpy; BigGAN-PyTorch
its layers.py and sync_batchnorm (in the checkout).
"""

import argparse
import ast
import copy
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))  # our model files
sys.path.insert(0, HERE)
import sngan  # noqa: E402  (ours, before a checkout's sngan.py is on the path)
from common import UserError  # noqa: E402

TOLERANCE = 1e-5  # the largest relative error that passes


def report(what, ours, theirs):
    """Print the largest absolute and relative errors of `ours` against `theirs`: -> relative."""
    err = (ours - theirs).abs().max().item()
    rel = err / theirs.abs().max().item()
    print(f"{what:44s} max abs error {err:.3g}, relative {rel:.3g}")
    return rel


# ---------------------------------------------------------------------------- pytorch/examples
def check_dcgan(ref_dir):
    """dcgan/main.py's own Generator, Discriminator and weights_init at tiny widths, saved under
    main.py's names, read by dcgan.read_weights."""
    import dcgan

    with open(os.path.join(ref_dir, "dcgan", "main.py")) as f:
        src = f.read()
    wanted = {"Generator", "Discriminator", "weights_init"}
    body = [n for n in ast.parse(src).body if getattr(n, "name", None) in wanted]
    ns = dict(torch=torch, nn=torch.nn, nz=16, ngf=8, ndf=8, nc=3)
    exec(compile(ast.Module(body, []), "main.py", "exec"), ns)  # the reference's classes only
    torch.manual_seed(0)
    netG, netD = ns["Generator"](1), ns["Discriminator"](1)
    netG.apply(ns["weights_init"]), netD.apply(ns["weights_init"])
    with torch.no_grad():  # training-mode forwards: BatchNorm statistics that are not the initial
        for _ in range(3):
            netD(netG(torch.randn(16, 16, 1, 1)))
    netG.eval(), netD.eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(netG.state_dict(), f"{tmp}/netG_epoch_3.pth")  # main.py's names
        torch.save(netD.state_dict(), f"{tmp}/netD_epoch_3.pth")
        w = dcgan.read_weights(f"{tmp}/netG_epoch_3.pth")
    a = w["args"]
    print("args", a)
    G, D = (
        dcgan.Generator(a["res"], a["z_dim"], a["g_ch"]),
        dcgan.Discriminator(a["res"], a["d_ch"]),
    )
    G.load_state_dict(w["G"]), D.load_state_dict(w["D"])
    G.eval(), D.eval()
    z = torch.randn(8, 16)
    with torch.no_grad():
        x_ref = netG(z[:, :, None, None])
        logit_ref = torch.logit(netD(x_ref).double()).float().flatten()  # theirs ends in a sigmoid
        return [
            report("G images (eval)", G(z), x_ref),
            report("D logits (eval)", D(x_ref), logit_ref),
        ]


# ---------------------------------------------------------------- martinarjovsky/WassersteinGAN
def check_wgan(ref_dir, isize=64, nz=16, ngf=8):
    """models/dcgan.py's DCGAN_G and DCGAN_D saved as main.py saves them; wgan.read_weights reads
    netG_epoch_N.pth and refuses netD_epoch_N.pth."""
    import wgan

    sys.path.insert(0, ref_dir)
    from models import dcgan as ref

    torch.manual_seed(0)
    netG, netD = ref.DCGAN_G(isize, nz, 3, ngf, 1, 0), ref.DCGAN_D(isize, nz, 3, ngf, 1, 0)
    for m in netG.modules():  # main.py's weight initialisation, restated
        if type(m).__name__.find("Conv") != -1:
            m.weight.data.normal_(0.0, 0.02)
        elif type(m).__name__.find("BatchNorm") != -1:
            m.weight.data.normal_(1.0, 0.02)
            m.bias.data.fill_(0)
    with torch.no_grad():  # training forwards move the BatchNorm statistics
        for _ in range(3):
            netG(torch.randn(16, nz, 1, 1))
    netG.eval()
    refused = False
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(imageSize=isize, nz=nz, nc=3, ngf=ngf, ngpu=1, n_extra_layers=0, noBN=False)
        with open(f"{tmp}/generator_config.json", "w") as f:  # main.py writes it beside them
            f.write(json.dumps(dict(cfg, mlp_G=False)) + "\n")
        torch.save(netG.state_dict(), f"{tmp}/netG_epoch_3.pth")  # main.py's saves
        torch.save(netD.state_dict(), f"{tmp}/netD_epoch_3.pth")
        w = wgan.read_weights(f"{tmp}/netG_epoch_3.pth")
        G = wgan.load_generator(f"{tmp}/netG_epoch_3.pth")
        try:
            wgan.read_weights(f"{tmp}/netD_epoch_3.pth")
        except UserError as e:
            refused = "\n" not in str(e)
            print("netD_epoch_3.pth: refused:", str(e).replace(tmp, "TMP"))
    print("args", w["args"])
    z = torch.randn(8, nz)
    with torch.no_grad():
        rels = [report("G images (eval)", G(z), netG(z[:, :, None, None]))]
    return rels + [0.0 if refused else float("inf")]


# ------------------------------------------------------------------------ ajbrock/BigGAN-PyTorch
class Stub(types.ModuleType):
    """A module whose every attribute is another stub: torchvision and h5py, which BigGAN-PyTorch's
    utils.py only names at import time."""

    def __getattr__(self, name):
        return Stub(name) if not name.startswith("__") else super().__getattribute__(name)


def check_biggan(ref_dir, res=128, attn="64"):
    """BigGAN.py's G, D and G_ema saved by utils.save_weights, read by biggan.read_weights."""
    import biggan

    for name in (
        "torchvision",
        "torchvision.transforms",
        "torchvision.datasets",
        "datasets",
        "torchvision.datasets.utils",
        "torchvision.datasets.folder",
        "h5py",
    ):
        sys.modules.setdefault(name, Stub(name))
    sys.path.insert(0, ref_dir)
    import BigGAN
    import utils

    torch.manual_seed(0)
    argv = ["--G_ch", "8", "--D_ch", "8", "--dim_z", "18", "--shared_dim", "16", "--hier",
            "--G_shared", "--G_attn", attn, "--D_attn", attn, "--SN_eps", "1e-6", "--ema"]  # fmt: skip
    config = vars(utils.prepare_parser().parse_args(argv))
    config.update(resolution=res, n_classes=5)  # train.py adds these from the data set
    config["G_activation"] = utils.activation_dict[config["G_nl"]]  # nn.ReLU modules, as train.py
    config["D_activation"] = utils.activation_dict[config["D_nl"]]
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    G_ema = BigGAN.Generator(**{**config, "skip_init": True, "no_optim": True})
    G_ema.load_state_dict(G.state_dict())
    with torch.no_grad():  # training forwards move u and the BatchNorm statistics
        for _ in range(3):
            z, y = torch.randn(8, G.dim_z), torch.randint(0, 5, (8,))
            D(G(z, G.shared(y)), y)
            G_ema(z, G_ema.shared(y))
        for p in G_ema.parameters():  # G_ema: other weights than G
            p.add_(0.01 * torch.randn_like(p))
    G.eval(), D.eval(), G_ema.eval()
    state = dict(itr=3, epoch=0, save_num=0, save_best_num=0, best_IS=0, best_FID=999999)
    with tempfile.TemporaryDirectory() as tmp:
        utils.save_weights(G, D, dict(state, config=config), tmp, "exp", None, G_ema)  # train.py's
        print("files:", sorted(os.listdir(f"{tmp}/exp")))
        path = f"{tmp}/exp/G_ema.pth"
        w = biggan.read_weights(path)
        G_ema2 = biggan.load_generator(path, standing=0)
        state = biggan.read_torch(f"{tmp}/exp/state_dict.pth", "cpu", allow=[torch.nn.ReLU])
    c = state["config"]  # read as biggan.py reads it: weights_only, nn.ReLU the one class allowed
    print(f"state_dict.pth config: {len(c)} entries, G_activation {c['G_activation']!r}")
    print("args", w["args"], "classes", w["classes"])
    a, n = w["args"], len(w["classes"])
    G2 = biggan.Generator(a["res"], a["z_dim"], a["g_ch"], n, a["shared_dim"], a["attn_res"])
    G2.load_state_dict(w["G"])
    D2 = biggan.Discriminator(a["res"], a["d_ch"], n, a["attn_res"])
    D2.load_state_dict(w["D"])
    G2.eval(), D2.eval()
    z, y = torch.randn(8, G.dim_z), torch.randint(0, 5, (8,))
    x = torch.rand(8, 3, res, res) * 2 - 1
    with torch.no_grad():
        x_ref = G(z, G.shared(y))
        return [
            report("G images (eval)", G2(z, y), x_ref),
            report("G_ema images (eval)", G_ema2(z, y), G_ema(z, G_ema.shared(y))),
            report("D logits on G's images (eval)", D2(x_ref, y), D(x_ref, y)[:, 0]),
            report("D logits on uniform noise (eval)", D2(x, y), D(x, y)[:, 0]),
        ]


# ------------------------------------------------------------------ NVlabs/stylegan2-ada-pytorch
SG2_CASES = [  # res, c_dim, cbase, cmax, z_dim, w_dim, mapping layers, its lr mul, mbstd, freezed
    (32, 0, 512, 32, 32, 32, 2, 0.01, 4, 0),
    (64, 5, 1024, 64, 24, 32, 8, 0.01, 4, 4),
    (32, 6, 256, 16, 16, 16, 2, 0.1, 2, 10),
]


def sg2_snapshot(dnnlib, augment, case, path, seed):
    """The reference networks of one case, pickled as its training loop's snapshot: -> the dict."""
    res, c_dim, cbase, cmax, z_dim, w_dim, map_layers, lr_mul, mbstd, freezed = case
    torch.manual_seed(seed)
    G_kwargs = dnnlib.EasyDict(
        class_name="training.networks.Generator", z_dim=z_dim, w_dim=w_dim,
        mapping_kwargs=dnnlib.EasyDict(num_layers=map_layers, lr_multiplier=lr_mul),
        synthesis_kwargs=dnnlib.EasyDict(channel_base=cbase, channel_max=cmax, num_fp16_res=4,
                                         conv_clamp=256),
    )  # fmt: skip
    D_kwargs = dnnlib.EasyDict(
        class_name="training.networks.Discriminator", channel_base=cbase, channel_max=cmax,
        num_fp16_res=4, conv_clamp=256, block_kwargs=dnnlib.EasyDict(freeze_layers=freezed),
        mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=mbstd),
    )  # fmt: skip
    common_kwargs = dict(c_dim=c_dim, img_resolution=res, img_channels=3)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train()
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train()
    with torch.no_grad():  # every weight and buffer off its initial value (biases, w_avg, ...)
        for net in (G, D):
            for name, t in [*net.named_parameters(), *net.named_buffers()]:
                if not name.endswith("resample_filter"):
                    t.add_(0.2 * torch.randn_like(t))
    G_ema = copy.deepcopy(G)
    with torch.no_grad():
        for t in G_ema.parameters():
            t.add_(0.05 * torch.randn_like(t))
    pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                               brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)  # fmt: skip
    data_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path="x.zip",
                       use_labels=bool(c_dim), max_size=100, xflip=False, resolution=res)  # fmt: skip
    snapshot = dict(training_set_kwargs=data_kwargs)  # the snapshot dict's entries
    for name, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", pipe)]:
        snapshot[name] = copy.deepcopy(module).eval().requires_grad_(False).cpu()
    with open(path, "wb") as f:
        pickle.dump(snapshot, f)
    return snapshot


@torch.no_grad()
def sg2_compare(sg, tag, path, theirs, c_dim, n=8):
    """Our networks read from `path` against the reference's `theirs`: -> the relative errors."""
    w = sg.read_weights(path)
    a = w["args"]
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(n, a["z_dim"], generator=gen)
    y = torch.randint(0, c_dim, (n,), generator=gen) if c_dim else None
    c = torch.nn.functional.one_hot(y, c_dim).float() if c_dim else torch.zeros(n, 0)
    print(tag)
    rels = []
    for k in ("G", "G_ema"):
        ours = sg.Generator(a["res"], a["z_dim"], a["w_dim"], c_dim, a["cbase"], a["cmax"],
                            a["map_layers"]).eval()  # fmt: skip
        ours.load_state_dict(w[k])
        for psi in (1.0, 0.7):
            img = theirs[k](z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)
            rels.append(report(f"    {k} images, psi {psi}", ours(z, y, psi=psi), img))
    D = sg.Discriminator(a["res"], c_dim, a["cbase"], a["cmax"], mbstd_group=a["mbstd_group"])
    D.load_state_dict(w["D"])
    D.eval()
    img = theirs["G_ema"](z, c, noise_mode="const", force_fp32=True)
    x = torch.randn(n, 3, a["res"], a["res"], generator=gen)
    for name, inp in (("their G_ema's images", img), ("noise", x)):
        logits = theirs["D"](inp, c, force_fp32=True)[:, 0]
        rels.append(report(f"    D logits on {name}", D(inp, y), logits))
    return rels


@torch.no_grad()
def sg2_compare_converted(tag, converted, theirs, a, c_dim, n=8):
    """legacy.py's networks (from a TF pickle) against the reference's originals: -> errors."""
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(n, a["z_dim"], generator=gen)
    c = torch.eye(c_dim)[torch.arange(n) % c_dim] if c_dim else torch.zeros(n, 0)
    print(tag)
    rels = []
    for k in ("G", "G_ema"):
        kw = dict(truncation_psi=0.7, noise_mode="const", force_fp32=True)
        rels.append(
            report(f"    {k} images, psi 0.7", converted[k](z, c, **kw), theirs[k](z, c, **kw))
        )
    x = torch.randn(n, 3, a["res"], a["res"], generator=gen)
    d_conv, d_ref = converted["D"](x, c, force_fp32=True), theirs["D"](x, c, force_fp32=True)
    return rels + [report("    D logits on noise", d_conv, d_ref)]


def check_stylegan2_ada(ref_dir):
    """network-snapshot-*.pkl files of the reference's networks, TF pickles of them converted by
    its legacy.py, and a run started from one snapshot with --init and --freeze-d."""
    sys.path.insert(0, os.path.abspath(ref_dir))
    import dnnlib
    import legacy
    from training import augment

    import stylegan2_ada as sg
    import test_models as fx  # our TF-record writer (the test fixtures)

    torch.backends.cudnn.allow_tf32 = False
    rels = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(SG2_CASES):
            res, c_dim, *_, lr_mul, mbstd, freezed = case
            path = f"{tmp}/network-snapshot-{i:06d}.pkl"
            theirs = sg2_snapshot(dnnlib, augment, case, path, seed=i)
            tag = f"pytorch pickle: res {res}, c_dim {c_dim}, G mapping lr {lr_mul}, freezed {freezed}"
            rels += sg2_compare(sg, tag, path, theirs, c_dim)

            w = sg.read_weights(path)  # our reading written as a TF (G, D, Gs) pickle
            tf_path = f"{tmp}/tf-{i}.pkl"
            nets = (fx.tf_g(w["G"], w["args"], c_dim), fx.tf_d(w["D"], w["args"], c_dim),
                    fx.tf_g(w["G_ema"], w["args"], c_dim))  # fmt: skip
            fx.dump(nets, tf_path, protocol=2)
            with open(tf_path, "rb") as f:
                converted = legacy.load_network_pkl(f)  # the reference's converter (it unpickles)
            for k in ("G", "D", "G_ema"):
                converted[k].eval()
            tag = "  TF pickle of it, converted by legacy.py, against the reference's networks"
            rels += sg2_compare_converted(tag, converted, theirs, w["args"], c_dim)
            tag = "  TF pickle, read_weights, against legacy.py's networks"
            rels += sg2_compare(sg, tag, tf_path, converted, c_dim)

        # a run from a real snapshot (the last case: 6 classes, as the toy data)
        out = f"{tmp}/run"
        args = ["--data", "toy", "--res", "32", "--batch", "4", "--steps", "1", "--device", "cpu"]
        sg.train(sg.get_args([*args, "--out", out, "--init", path, "--freeze-d", "4"]))
        ckpt, w = torch.load(f"{out}/ckpt.pt", weights_only=True), sg.read_weights(path)
    frozen = [k for k in w["D"] if k.startswith(("blocks.0.fromrgb.", "blocks.0.conv0.",
                                                 "blocks.0.conv1.", "blocks.0.skip."))]  # fmt: skip
    kept = all(torch.equal(ckpt["D"][k], w["D"][k]) for k in frozen)
    moved = sum(not torch.equal(ckpt["D"][k], w["D"][k]) for k in w["D"] if k not in frozen)
    print(f"--init {os.path.basename(path)} --freeze-d 4, 1 step: step {ckpt['step']}, the "
          f"{len(frozen)} frozen D tensors unchanged: {kept}, other D tensors changed: {moved} of "
          f"{len(w['D']) - len(frozen) - 1} (+ the unused D w_avg)")  # fmt: skip
    return rels + [0.0 if kept and moved else float("inf")]


# ------------------------------------------------------------------ heykeetae/Self-Attention-GAN
def sagan_fresh(ref_cls, args, state, train):
    """The reference network as a user gets it back: built anew, its file loaded (strict)."""
    net = ref_cls(*args)
    net.load_state_dict(state)
    return net.train(train)


def sagan_hinge_steps(G, D, z_dim, steps, lr):
    """trainer.py's hinge-loss loop (D on real, D on fake, then G on a fresh z), Adam betas
    (0, 0.9) as its defaults; the 'real' images are uniform noise in [-1, 1]."""
    opt_G = torch.optim.Adam(G.parameters(), lr, (0.0, 0.9))
    opt_D = torch.optim.Adam(D.parameters(), 4 * lr, (0.0, 0.9))
    for _ in range(steps):
        real = torch.rand(8, 3, 64, 64) * 2 - 1
        d_real = D(real)[0]
        fake = G(torch.randn(8, z_dim))[0]
        d_fake = D(fake)[0]
        loss_D = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
        opt_D.zero_grad(), opt_G.zero_grad()
        loss_D.backward()
        opt_D.step()
        loss_G = -D(G(torch.randn(8, z_dim))[0])[0].mean()
        opt_D.zero_grad(), opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()


def sagan_case(sagan, ref, tmp, tag, conv_dim, z_dim, seed, train_steps=0, lr=1e-3, parallel=False):
    print(f"{tag}: conv_dim {conv_dim}, z_dim {z_dim}, seed {seed}, {train_steps} training steps")
    torch.manual_seed(seed)
    G_ref = ref.Generator(8, 64, z_dim, conv_dim)
    D_ref = ref.Discriminator(8, 64, conv_dim)
    if train_steps:
        sagan_hinge_steps(G_ref, D_ref, z_dim, train_steps, lr)
    else:  # training-mode forwards move u, v and the BatchNorm statistics; gammas set off 0
        with torch.no_grad():
            for _ in range(3):
                D_ref(G_ref(torch.randn(8, z_dim))[0])
            for net in (G_ref, D_ref):
                net.attn1.gamma.fill_(0.7), net.attn2.gamma.fill_(-0.4)
    gammas = [
        round(n.gamma.item(), 5) for n in (G_ref.attn1, G_ref.attn2, D_ref.attn1, D_ref.attn2)
    ]
    print(f"  reference gammas G attn1, attn2, D attn1, attn2: {gammas}")
    step = 3 + train_steps
    save_G = torch.nn.DataParallel(G_ref) if parallel else G_ref  # trainer.py's --parallel
    save_D = torch.nn.DataParallel(D_ref) if parallel else D_ref
    paths = [os.path.join(tmp, f"{step}_{n}.pth") for n in "GD"]
    torch.save(save_G.state_dict(), paths[0])  # trainer.py: '{}_G.pth'.format(step + 1)
    torch.save(save_D.state_dict(), paths[1])
    sd_G, sd_D = copy.deepcopy(G_ref.state_dict()), copy.deepcopy(D_ref.state_dict())

    w = sagan.read_weights(paths[0])
    w_D = sagan.read_weights(paths[1])  # the D file: the same pair, read the other way round
    print("  args", w["args"])
    same = (
        w_D["args"] == w["args"]
        and all(torch.equal(w["G"][k], w_D["G"][k]) for k in w["G"])
        and all(torch.equal(w["D"][k], w_D["D"][k]) for k in w["D"])
    )
    print(f"  read from {step}_D.pth: the same args, G and D: {same}")
    G = sagan.load_generator(paths[0])
    D = sagan.networks(w["args"])[1]
    D.load_state_dict(w["D"])
    D.eval()

    gen = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(8, z_dim, generator=gen)
    noise = torch.rand(8, 3, 64, 64, generator=gen) * 2 - 1
    rels = []
    with torch.no_grad():
        x_ref = sagan_fresh(ref.Generator, (8, 64, z_dim, conv_dim), sd_G, False)(z)[0]
        x = G(z)
        rels.append(report("  G images (eval, first forward)", x, x_ref))
        rels.append(0.0 if torch.equal(G(z), x) else float("inf"))
        print(f"  G's second eval forward equals its first: {rels[-1] == 0.0}")
        for name, inp in (("their G's images", x_ref), ("uniform noise", noise)):
            theirs = sagan_fresh(ref.Discriminator, (8, 64, conv_dim), sd_D, False)(inp)[0]
            rels.append(report(f"  D logits on {name} (eval, first forward)", D(inp), theirs))
        # training mode: batch statistics, and u, v moved by one iteration in both
        G_tr = sagan.networks(w["args"])[0]
        G_tr.load_state_dict(w["G"])
        x_tr = G_tr.train()(z)
        x_tr_ref = sagan_fresh(ref.Generator, (8, 64, z_dim, conv_dim), sd_G, True)(z)[0]
        rels.append(report("  G images (train mode, first forward)", x_tr, x_tr_ref))
        D_tr = sagan.networks(w["args"])[1]
        D_tr.load_state_dict(w["D"])
        D_tr_ref = sagan_fresh(ref.Discriminator, (8, 64, conv_dim), sd_D, True)
        rels.append(
            report(
                "  D logits on noise (train mode, first forward)", D_tr(noise), D_tr_ref(noise)[0]
            )
        )
        u_ref = D_tr_ref.l1[0].module.weight_u
        rels.append(report("  D l1's u after that forward", D_tr.l1[0].u, u_ref))
    return rels, paths


def check_sagan(ref_dir):
    """sagan_models.py's Generator and Discriminator (their own code), saved as trainer.py saves
    them ({step}_G.pth, {step}_D.pth), read as --arch heykeetae networks: three cases (their
    widths with a small z; after 4 hinge-loss Adam steps; saved from nn.DataParallel); then
    sagan.py --sample and --init on the last files."""
    sys.path.insert(0, ref_dir)
    import sagan_models as ref  # the reference's own code (it imports its spectral.py)

    import sagan

    rels = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate([
            dict(tag="case 1, their widths (conv_dim 64), small z", conv_dim=64, z_dim=16, seed=0),
            dict(tag="case 2, after 4 hinge-loss Adam steps", conv_dim=64, z_dim=128, seed=1,
                 train_steps=4, lr=2e-3),
            dict(tag="case 3, saved from nn.DataParallel (their --parallel)", conv_dim=64,
                 z_dim=8, seed=2, parallel=True),
        ]):  # fmt: skip
            folder = os.path.join(tmp, str(i))
            os.makedirs(folder)
            r, paths = sagan_case(sagan, ref, folder, **case)
            rels += r
        g_file = os.path.basename(paths[0])
        rels.append(run_ok("sagan", ["--sample", g_file, "--n", "4", "--device", "cpu"], folder))
        print("  grid written:", os.path.exists(os.path.join(folder, "samples_seed0.png")))
        argv = ["--init", g_file, "--data", "toy", "--batch", "4", "--steps", "1", "--out", "run",
                "--device", "cpu", "--precision", "fp32"]  # fmt: skip
        rels.append(run_ok("sagan", argv, folder))
        ckpt = torch.load(os.path.join(folder, "run", "ckpt.pt"), weights_only=True)
        print(f"  run checkpoint: step {ckpt['step']}, arch {ckpt['args']['arch']}")
    return rels


def run_ok(model, argv, cwd):
    """`model`.py with argv in cwd: 0.0 if it exits 0, else inf; prints its last line."""
    r = subprocess.run([sys.executable, os.path.join(HERE, f"{model}.py"), *argv], cwd=cwd,
                       capture_output=True, text=True)  # fmt: skip
    out = (r.stdout + r.stderr).strip().splitlines()
    print(f"$ python {model}.py {' '.join(argv)}\n  exit {r.returncode}; last line: "
          f"{out[-1] if out else ''}")  # fmt: skip
    return 0.0 if r.returncode == 0 else float("inf")


# ---------------------------------------------------------------------------- tqch/SNGAN-AnimeFace
def tqch_reference(ref_dir):
    sys.path[:0] = [
        ref_dir,
        os.path.join(ref_dir, "spectral_norm"),
    ]  # snresnet.py: `from snconv`
    spec = importlib.util.spec_from_file_location("ref_sngan", os.path.join(ref_dir, "sngan.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    from utils import EMA  # their utils.py

    return ref, EMA


def tqch_steps(netG, netD, ema, latent, steps, lr, seed):
    """train.py's train_step (d_iters 1, d_freq 1, g_batches 2, hinge loss), on noise images."""
    gen = torch.Generator().manual_seed(seed)
    optD = torch.optim.Adam(netD.parameters(), lr=lr, betas=(0.0, 0.9))
    optG = torch.optim.Adam(netG.parameters(), lr=lr, betas=(0.0, 0.9))

    def loss_D(x, y):
        return torch.clamp(1 - torch.where(y == 1, x, -x), min=0).mean()

    for _ in range(steps):
        x_true = torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1
        netD.zero_grad(set_to_none=True)
        d = loss_D(netD(x_true), torch.ones(4, 1))
        with torch.no_grad():
            x_fake = netG.sample(4, torch.randn(4, latent, generator=gen))
        d = d + loss_D(netD(x_fake), torch.zeros(4, 1))
        d.backward()
        optD.step()
        netD.zero_grad(set_to_none=True)
        for _ in range(2):
            g = -netD(netG.sample(4, torch.randn(4, latent, generator=gen))).mean() / 2
            g.backward()
        optG.step()
        ema.update()
        netG.zero_grad(set_to_none=True)
    return optD, optG


def tqch_case(ref, EMA, folder, base_ch, latent, num_blocks, steps, seed, loss="hinge"):
    print(f"case: base_ch {base_ch}, latent_dim {latent}, num_blocks {num_blocks} (G reversed),"
          f" {steps} training steps, --loss {loss}, seed {seed}")  # fmt: skip
    torch.manual_seed(seed)
    netD = ref.NetD(3, base_ch, list(num_blocks))
    netG = ref.NetG(3, base_ch, latent, list(num_blocks)[::-1])
    if loss == "hinge":
        netD.out_fc[-1].bias = None  # train.py:131
    ema = EMA(netG, decay=0.9999)
    optD, optG = tqch_steps(netG, netD, ema, latent, steps, 2e-3, seed)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = os.path.join(folder, "anime-sngan.pt")
    torch.save(
        {
            "netD": netD.state_dict(),
            "netG": netG.state_dict(),
            "optD": optD.state_dict(),
            "optG": optG.state_dict(),
            "scalerD": scaler.state_dict(),
            "scalerG": scaler.state_dict(),
            "ema": ema.state_dict(),
            "epoch": 10,
        },
        path,
    )  # train.py:316-328
    bare = os.path.join(folder, "netG.pt")
    torch.save(netG.state_dict(), bare)
    gammas = [
        round(m.gamma.item(), 4) for m in netD.modules() if getattr(m, "gamma", None) is not None
    ]
    print(f"  their D gammas after training: {gammas[:4]} ... {gammas[-1]}")

    w = sngan.read_weights(path)
    print(f"  read_weights args: {w['args']}; D read: {w['D'] is not None};"
          f" G_ema from the shadow: {w['G_ema'] is not None}")  # fmt: skip
    w_bare = sngan.read_weights(bare)
    same = w_bare["args"] == dict(w["args"], d_ch=base_ch) and w_bare["G_ema"] is None
    same = same and all(torch.equal(v, w["G"][k]) for k, v in w_bare["G"].items())
    print(f"  bare netG file: the same args and G, no G_ema, no D: {same and w_bare['D'] is None}")
    rels = [0.0 if same else float("inf")]

    gen = torch.Generator().manual_seed(seed + 100)
    z = torch.randn(8, latent, generator=gen)
    noise = torch.rand(8, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        netG.eval()
        x_ref = netG(z)
        with ema:  # train.py:306-309: their samples
            x_ema_ref = netG(z)
        G = sngan.networks(w["args"])[0]
        G.load_state_dict(w["G"])
        rels.append(report("G images (eval)", G.eval()(z), x_ref))
        G_ema = sngan.load_generator(path)
        rels.append(report("G_ema images (eval, load_generator)", G_ema(z), x_ema_ref))
        G_bare = sngan.load_generator(bare)  # no EMA: G
        rels.append(report("G images from the bare netG (load_generator)", G_bare(z), x_ref))
        # train mode: batch statistics
        netG.train()
        G.train()
        rels.append(report("G images (train mode)", G(z), netG(z)))
    if w["D"] is None:
        print("  D not read (an output bias: their --loss vanilla)")
        return rels, path
    D = sngan.networks(w["args"])[1]
    D.load_state_dict(w["D"])
    for name, x in (("their G's images", x_ref), ("uniform noise", noise)):
        with torch.no_grad():
            theirs = copy.deepcopy(netD).eval()(x)
            rels.append(report(f"D logits on {name} (eval)", D.eval()(x), theirs.flatten()))
        # training mode: u moves by one iteration in both; then the gradients of D's weights
        D_tr, netD_tr = copy.deepcopy(D).train(), copy.deepcopy(netD).train()
        ours, theirs = D_tr(x), netD_tr(x).flatten()
        rels.append(report(f"D logits on {name} (train mode)", ours, theirs))
        ours.square().sum().backward()
        theirs.square().sum().backward()
        g_ours = torch.cat([p.grad.flatten() for p in D_tr.parameters()])
        g_theirs = torch.cat([p.grad.flatten() for p in netD_tr.parameters()])
        grad = report("  their D's gradients (all parameters)", g_ours, g_theirs)
        rels.append(grad / 10)  # sums over the batch and every position: 1e-4 passes
        u_ours = torch.cat([b for k, b in D_tr.state_dict().items() if k.endswith(".u")])
        u_theirs = torch.cat([b for k, b in netD_tr.state_dict().items() if k.endswith(".u")])
        rels.append(report("  u after the training forward", u_ours, u_theirs))
    return rels, path


def tqch_sigma_orders(ref):
    """Why our SN conv (--arch sngan's order) and theirs differ for the same W, u, gamma."""
    print("spectral norm, one conv 16 -> 32 channels, 3x3, the same weight, u and gamma:")
    import snconv  # their layer's module, as snresnet.py imports it

    torch.manual_seed(0)
    theirs = snconv.SNConv2d(16, 32, 3, 1, 1)
    theirs._init_gamma()
    x = torch.randn(2, 16, 8, 8)
    sd = {k: v.reshape(()) if k == "gamma" else v for k, v in theirs.state_dict().items()}
    rows = []
    for name, cls in (
        ("ours (sngan order)", sngan.SNConv2d),
        ("ours (tqch order)", sngan.TqchSNConv2d),
    ):
        layer = cls(16, 32, 3, 1, 1)
        for u_name, u in (
            ("their fresh u (randn)", sd["u"]),
            ("u normalised", sd["u"] / sd["u"].norm()),
        ):
            layer.load_state_dict(dict(sd, u=u))
            with torch.no_grad():
                for mode in ("eval", "train"):
                    layer.train(mode == "train")
                    ref_layer = copy.deepcopy(theirs).train(mode == "train")
                    ref_layer.u = u.clone()
                    layer.u.copy_(u)
                    y_ref, y = ref_layer(x), layer(x)
                    rel = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
                    ratio = (y.abs().max() / y_ref.abs().max()).item()
                    rows.append(
                        f"  {name:20s} {u_name:22s} {mode:5s}: relative {rel:.3g}, scale ratio {ratio:.4f}"
                    )
    print("\n".join(rows))
    W = theirs.weight.detach().flatten(1)
    u = sd["u"]
    print(f"  |u| of their fresh layer {u.norm():.4f}; sigma(W) {torch.linalg.matrix_norm(W, 2):.4f};"
          f" |W^T u|/|u| {(W.t() @ u).norm() / u.norm():.4f};"
          f" |W normalize(W^T u)| {(W @ torch.nn.functional.normalize(W.t() @ u, dim=0)).norm():.4f}")  # fmt: skip


def check_sngan(ref_dir):
    """tqch/SNGAN-AnimeFace's NetG, NetD and EMA (their own code, loaded by file: our sngan.py has
    the same name), a few of their training steps, saved as train.py's checkpoint dict and as a
    bare netG, read as --arch tqch: G, G_ema and bare-netG images, D logits and gradients, u, in
    four cases; the two spectral-norm orders side by side; then --sample and --init."""
    ref, EMA = tqch_reference(os.path.abspath(ref_dir))
    rels = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            dict(base_ch=8, latent=16, num_blocks=(1, 1, 1, 1), steps=3, seed=0),
            dict(base_ch=8, latent=16, num_blocks=(2, 2, 2, 2), steps=3, seed=1),
            dict(base_ch=4, latent=8, num_blocks=(1, 2, 3, 1), steps=2, seed=2),
            dict(
                base_ch=4,
                latent=8,
                num_blocks=(1, 1, 1, 1),
                steps=1,
                seed=3,
                loss="vanilla",
            ),
        ]
        for i, c in enumerate(cases):
            folder = os.path.join(tmp, str(i))
            os.makedirs(folder)
            r, path = tqch_case(ref, EMA, folder, **c)
            rels += r
        tqch_sigma_orders(ref)
        folder = os.path.join(tmp, "1")
        rels.append(
            run_ok("sngan", ["--sample", "anime-sngan.pt", "--n", "4", "--device", "cpu"], folder)
        )
        print("  grid written:", os.path.exists(os.path.join(folder, "samples_seed0.png")))
        argv = ["--init", "anime-sngan.pt", "--data", "toy", "--batch", "4", "--steps", "1",
                "--out", "run", "--device", "cpu", "--precision", "fp32"]  # fmt: skip
        rels.append(run_ok("sngan", argv, folder))
        ckpt = torch.load(os.path.join(folder, "run", "ckpt.pt"), weights_only=True)
        a = ckpt["args"]
        print(
            f"  run checkpoint: step {ckpt['step']}, arch {a['arch']}, num_blocks {a['num_blocks']}"
        )
    return rels


CHECKS = {
    "dcgan": check_dcgan,
    "wgan": check_wgan,
    "biggan": check_biggan,
    "stylegan2_ada": check_stylegan2_ada,
    "sagan": check_sagan,
    "sngan": check_sngan,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("format", choices=sorted(CHECKS), help="which reference project's files")
    p.add_argument("checkout", help="a checkout of that reference project")
    a = p.parse_args(argv)
    if not os.path.isdir(a.checkout):
        p.error(f"no folder at {a.checkout}")
    rels = CHECKS[a.format](os.path.abspath(a.checkout))
    worst = max(rels)
    print(f"largest relative error {worst:.3g}: {'pass' if worst <= TOLERANCE else 'FAIL'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
