"""Stress check of the multi-process teardown: N two-process torchrun runs of every model in a
row, on the CPU, tiny widths (the test suite's), each on a free port (--standalone). Prints one
line a run and, for a failed one, each rank's own last error lines; exit status 1 if any failed.

    python .ci/torchrun_stress.py                  # 20 runs of each of the seven models
    python .ci/torchrun_stress.py --runs 5 dcgan   # 5 runs of dcgan
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
from test_models import MODELS, TINY  # noqa: E402  (the suite's tiny widths)


def one_run(model, folder):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["--log-dir", str(folder / "logs"), "--redirects", "3", f"{model}.py"]
    cmd += ["--data", "toy", "--res", "32", "--batch", "8", "--steps", "3", "--device", "cpu"]
    cmd += ["--out", str(folder / "run"), "--log-every", "1", *TINY[model]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    errors = []
    for log in sorted((folder / "logs").glob("*/attempt_*/*/stderr.log")) if r.returncode else ():
        lines = log.read_text().strip().splitlines()[-8:]
        errors.append(f"    rank {log.parent.name}: " + ("\n      ".join(lines) or "(nothing)"))
    return r.returncode, errors


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=MODELS, help="default: every model file")
    p.add_argument("--runs", type=int, default=20, help="runs of each model (default 20)")
    args = p.parse_args()
    failed = 0
    for model in args.models:
        ok, t0 = 0, time.time()
        for i in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                rc, errors = one_run(model, pathlib.Path(tmp))
            ok += rc == 0
            print(f"{model} run {i}/{args.runs}: exit {rc}", flush=True)
            for e in errors:
                print(e, flush=True)
        failed += args.runs - ok
        print(f"{model}: {ok}/{args.runs} exited 0 ({time.time() - t0:.0f} s)", flush=True)
    print(f"{'PASS' if failed == 0 else 'FAIL'}: {failed} failed run(s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
