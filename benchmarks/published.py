"""Time the published code (github.com/CUAI/Neural-Manifold-Ordinary-Differential-Equations) itself.

    PYTHONPATH=PATH python benchmarks/published.py --checkout PATH --M Sphere --dataset 4wrapped \
        --epochs 100 [--threads 1] [--test test.pt --eval_every 10 --kl_below 0.1] [--json out.json]

Run as a plain script in its own process with the checkout on ``PYTHONPATH`` (``benchmarks.benchmark
--published PATH`` does this): the published code's top-level packages (``flows``, ``distributions``)
share names with this project's, so the two cannot live in one interpreter. Nothing of the published code is copied here: this file
imports its model classes, base distributions and data generators from the checkout and drives them
with the same loop as its ``main_density.py`` (Adam with weight decay 1e-5, learning-rate drops x0.1
at ``j * epochs // 3``, a fresh batch of ``data_gen(dataset, 200)`` per step, loss
``-mean(base.log_prob(z) + delta_logp)``), timing each step. With ``--test`` (points and their exact
log-density, written by the caller from ``data.get_density``) it evaluates the test KL
``mean(log p_true - log q_model)`` every ``--eval_every`` steps with the model's own solver, outside
the timed steps, and stops once it is below ``--kl_below`` (time to quality).

Current PyTorch needs ``Distribution.set_default_validate_args(False)`` for the published code's
distributions; that is set here and changes no number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkout", required=True, help="a clone of the published repository")
    p.add_argument("--M", choices=["Sphere", "Hyperboloid"], required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch_size", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test", default=None, help="torch file {'x': points, 'log_p': exact log-density}")
    p.add_argument("--eval_every", type=int, default=10)
    p.add_argument("--kl_below", type=float, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        from distributions.vmf import VonMisesFisher  # noqa: I001 (the published code's packages, not ours)
        from distributions.wnormal import WrappedNormal
        from flows.hyperbolic import Lorentz
        from flows.mcnf import HCNF, SCNF
        from flows.sphere import Sphere
    except ImportError as e:
        sys.exit(f"published.py: cannot import the published code ({e}); run it with PYTHONPATH=CHECKOUT")

    import flows  # noqa: I001

    if not Path(flows.__file__).resolve().is_relative_to(Path(a.checkout).resolve()):
        sys.exit(f"published.py: 'flows' comes from {flows.__file__}, not from --checkout {a.checkout}: run it "
                 "with PYTHONPATH=CHECKOUT as a plain script (python benchmarks/published.py), not as a module")  # fmt: skip

    if a.M == "Hyperboloid":
        from test_densities.density_hyp import data_gen_hyp as data_gen

        M = Lorentz()
        base = WrappedNormal(M, M.zero((3,)), torch.ones(1, 2))
        model = HCNF(2, 32, 3)
    else:
        from test_densities.density_sphere import data_gen_sphere as data_gen

        M = Sphere()
        base = VonMisesFisher(M.zero((3,)), torch.ones(1))
        model = SCNF(2, 32, 3)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [j * a.epochs // 3 for j in (1, 2)], gamma=0.1)

    def log_q(x):
        z, delta = model(x)
        return base.log_prob(z).reshape(-1) + delta.reshape(-1)

    test = torch.load(a.test) if a.test else None

    def kl():
        with torch.no_grad() if a.M == "Hyperboloid" else torch.enable_grad():
            # the sphere model's divergence needs autograd even in evaluation; chunks bound the memory
            vals = [
                (lp - log_q(x).detach()).double()
                for x, lp in zip(test["x"].float().split(1000), test["log_p"].split(1000), strict=True)
            ]
        v = torch.cat(vals)
        return float(v.mean()), float(v.std() / len(v) ** 0.5)

    step_s, evals = [], []
    for epoch in range(1, a.epochs + 1):
        x = data_gen(a.dataset, a.batch_size)
        t0 = time.perf_counter()
        loss = -log_q(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step_s.append(time.perf_counter() - t0)
        if test is not None and epoch % a.eval_every == 0:
            k, se = kl()
            evals.append(dict(epoch=epoch, seconds=sum(step_s), kl=k, kl_stderr=se))
            if a.kl_below is not None and k < a.kl_below:
                break
    out = dict(
        M=a.M, dataset=a.dataset, epochs_run=len(step_s), threads=a.threads, lr=a.lr,
        mean_step_s=statistics.fmean(step_s), median_step_s=statistics.median(step_s),
        first_30_mean_step_s=statistics.fmean(step_s[:30]), train_seconds=sum(step_s), evals=evals,
        torch=torch.__version__,
    )  # fmt: skip
    text = json.dumps(out, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
