"""Earth event datasets: train on split seeds 0-4 and write docs/earth.md beside the published table.

    python scripts/earth.py --data_dir ../shared/data/earth [--datasets volcano earthquake flood fire]
        [--epochs 300] [--hidden 64] [--n_hidden 4] [--lr 5e-3] [--dev cuda]

Each run is a ``main_density.py`` command (shown in docs/earth.md); runs that finished are reused.
Test NLL is reported with the checkpoint of the best validation NLL (80/10/10 split by seed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PUBLISHED = [  # ../shared/data/earth/README.md (Riemannian score-based generative models paper)
    ("Mixture of Kent", "-0.80 ± 0.47", "0.33 ± 0.05", "0.73 ± 0.07", "1.18 ± 0.06"),
    ("Riemannian CNF", "-6.05 ± 0.61", "0.14 ± 0.23", "1.11 ± 0.19", "-0.80 ± 0.54"),
    ("Moser Flow", "-4.21 ± 0.17", "-0.16 ± 0.06", "0.57 ± 0.10", "-1.28 ± 0.05"),
    ("Stereographic score-based", "-3.80 ± 0.27", "-0.19 ± 0.05", "0.59 ± 0.07", "-1.28 ± 0.12"),
    ("Riemannian score-based", "-4.92 ± 0.25", "-0.19 ± 0.07", "0.48 ± 0.09", "-1.33 ± 0.06"),
]
DATASETS = ["volcano", "earthquake", "flood", "fire"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--n_hidden", type=int, default=4)
    p.add_argument("--lr", default="5e-3")
    p.add_argument("--dev", default="cuda")
    p.add_argument("--runs", default="results/earth")
    p.add_argument("--md", default="docs/earth.md")
    a = p.parse_args(argv)
    from flows import load_model, model_integral

    results = {}
    for ds in a.datasets:
        for seed in a.seeds:
            out = ROOT / a.runs / f"{ds}_split{seed}_{a.epochs}"
            cmd = ["main_density.py", "--M", "Sphere", "--dataset", ds, "--data_dir", a.data_dir,
                   "--split_seed", str(seed), "--epochs", str(a.epochs), "--flow_hidden_size", str(a.hidden),
                   "--n_hidden", str(a.n_hidden), "--lr", a.lr, "--dev", a.dev,
                   "--eval_freq", str(max(a.epochs // 20, 1)), "--out", str(out), "--quiet"]  # fmt: skip
            mf = out / "metrics.json"
            if not (mf.is_file() and json.loads(mf.read_text())["epochs"] == a.epochs):
                print("$ python", shlex.join(cmd), flush=True)
                r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
                if r.returncode != 0:
                    print(r.stderr[-2000:], file=sys.stderr)
                    continue
            m = json.loads(mf.read_text())
            model = load_model(out / "checkpoint.pt").double()
            best = out / "best.pt"
            if best.is_file():
                import torch

                model.load_state_dict(
                    {k: v.double() for k, v in torch.load(best, weights_only=False)["model"].items()}
                )
            m["integral"] = model_integral(model, n_radial=200, n_angular=400)
            m["cmd"] = "python " + shlex.join(cmd)
            results.setdefault(ds, []).append(m)
    write(ROOT / a.md, results, a)
    print(f"wrote {a.md}")


def write(path, results, a):
    lines = ["# Earth event datasets", "",
             f"Produced by `python scripts/earth.py --data_dir DIR --epochs {a.epochs} --hidden {a.hidden} "
             f"--n_hidden {a.n_hidden} --lr {a.lr} --dev {a.dev} --datasets {' '.join(a.datasets)} "
             f"--seeds {' '.join(map(str, a.seeds))}`. Test NLL in nats (lower is better), mean ± std over the "
             "split seeds run, with the checkpoint of the best validation NLL; integral: quadrature of the "
             "model density (midpoint rule 200x400), which must be 1.", "",
             "| dataset | splits | test NLL (mean ± std) | per split | integral (min, max) | train s per run | epochs |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for ds, ms in results.items():
        nll = [m["test_nll"] for m in ms]
        sd = statistics.stdev(nll) if len(nll) > 1 else float("nan")
        integ = [m["integral"] for m in ms]
        lines.append(f"| {ds} | {len(ms)} | {statistics.mean(nll):.3f} ± {sd:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in nll)} | {min(integ):.4f}, {max(integ):.4f} | "
                     f"{statistics.mean(m['train_seconds'] for m in ms):.0f} | {a.epochs} |")  # fmt: skip
    lines += [
        "",
        "Published (../shared/data/earth/README.md):",
        "",
        "| method | volcano | earthquake | flood | fire |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in PUBLISHED]
    lines += ["", "Commands of the runs:", ""]
    lines += [f"- `{m['cmd']}`" for ms in results.values() for m in ms]
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
