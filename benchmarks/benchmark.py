"""Speed benchmark: this project's default configuration against the reference configuration.

    python -m benchmarks.benchmark [--dev cpu] [--reps 5] [--steps 5] [--ttq_epochs 300]

Measured side by side in one process (repetitions interleaved, medians reported):
seconds per training step at batch 200, NFE forward/backward per step, peak memory, for each
manifold and for the default configuration, the reference configuration reproduced with this code
(sphere: rk4 step 1/16, 4 charts, adjoint, per-dimension autograd divergence; hyperboloid: dopri5
atol=rtol=1e-3, one chart at the origin, adjoint), Hutchinson instead of exact divergence, and the
adjoint instead of direct backprop; seconds to evaluate a 500x500 figure grid; and time-to-quality
(wall seconds of training until the test KL first drops below 0.1 nats). Writes a JSON file and
the markdown table docs/benchmark.md (or docs/benchmark_{device}.md for accelerators).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import sections
from benchmarks.measure import (  # noqa: F401
    DATASET,
    ROOT,
    _median_ms,
    _probe,
    _reset_peak_rss,
    _status_mib,
    _until_kl,
    build,
    compile_cost,
    configs,
    density,
    eval_cost,
    exact_kl,
    grid_seconds,
    peak_memory,
    step,
    sync,
    time_interleaved,
    time_steps,
    time_to_quality,
    time_to_quality_fm,
)
from train.config import (
    COMPILE_MIN_EPOCHS,
    COMPILE_MIN_EPOCHS_FUSED,
    COMPILE_MIN_EPOCHS_WARM,
    DEFAULT_SETTINGS,
    REFERENCE_SETTINGS,
    resolve_compile,
)
from utils import positive_int, resolve_device, run_cli

PUBLISHED_RUNS = [("Hyperboloid", "5gaussians", 300), ("Sphere", "4wrapped", 100)]


def train_run(M, epochs, device, compile_ode=False, lr=1e-2):
    """``epochs`` training steps of the default configuration as ``main_density.py`` takes them (Adam
    lr 1e-2 with weight decay 1e-5, x0.1 drops at 1/3 and 2/3, a fresh batch of 200 per step); every
    step timed. ``total_s`` includes the compilation, which happens in the first step."""
    if compile_ode:
        torch._dynamo.reset()  # this run pays its compilation (with inductor's disk cache warm)
    model = build(M, {**DEFAULT_SETTINGS[M], "compile": compile_ode}, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 3, 2 * epochs // 3], gamma=0.1)
    den, g = density(M), torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        x = den.sample(200, generator=g).to(device, torch.float32)
        sync(device)
        t0 = time.perf_counter()
        step(model, opt, x)
        sched.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return dict(epochs=epochs, total_s=sum(times), mean_step_s=statistics.fmean(times),
                steady_step_s=statistics.median(times[1:]), first_step_s=times[0])  # fmt: skip


def published(checkout, device, threads, ttq_epochs):
    """The published code timed from ``checkout`` (a clone of github.com/CUAI/Neural-Manifold-Ordinary-
    Differential-Equations) by ``benchmarks/published.py`` in its own process, one run per row of
    :data:`PUBLISHED_RUNS` plus its time to KL < 0.1 on S^2 4wrapped; this project's default
    configuration over the same epochs (eager and compiled) beside each."""
    import tempfile

    if device.type != "cpu":
        raise SystemExit("--published times the published code on the CPU (run the benchmark with --dev cpu)")
    script = ROOT / "benchmarks" / "published.py"
    base = [sys.executable, str(script), "--checkout", str(checkout), "--threads", str(threads or 1)]

    import os

    env = {**os.environ, "PYTHONPATH": str(checkout)}  # its packages, not this project's (same names)

    def run(*args):
        r = subprocess.run([*base, *map(str, args)], capture_output=True, text=True, timeout=3600, env=env)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"--published: the published code failed ({tail})")
        return json.loads(r.stdout[r.stdout.index("{") :])

    out = {"rows": {}}
    for M, dataset, epochs in PUBLISHED_RUNS:
        print(f"published code vs default: {M} {dataset} {epochs} epochs ...", flush=True)
        out["rows"][f"{M}/{dataset}"] = dict(
            published=run("--M", M, "--dataset", dataset, "--epochs", epochs),
            default=train_run(M, epochs, device),
            compiled=train_run(M, epochs, device, compile_ode=True),
        )
    if ttq_epochs:
        print("published code: time to KL < 0.1 on Sphere 4wrapped ...", flush=True)
        den = density("Sphere")
        x = den.sample(4000, generator=torch.Generator().manual_seed(123))  # the same points as _until_kl
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "test.pt"
            torch.save({"x": x, "log_p": den.log_prob(x)}, path)
            out["ttq_sphere"] = run("--M", "Sphere", "--dataset", "4wrapped", "--epochs", ttq_epochs,
                                    "--test", path, "--eval_every", 10, "--kl_below", 0.1)  # fmt: skip
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", default="cpu")
    p.add_argument("--reps", type=positive_int, default=5)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--ttq_epochs", type=int, default=300, help="epoch cap for time-to-quality (0: skip)")
    p.add_argument("--ttq_steps_fm", type=int, default=3000,
                   help="step cap for flow matching's time-to-quality (evaluated every 50 steps)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument(
        "--published",
        default=None,
        metavar="PATH",
        help="also time the published code from this clone of its repository (CPU)",
    )
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the page from a results file of an earlier run (no measurement)")  # fmt: skip
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe_compile", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.published and not (Path(a.published) / "flows" / "mcnf.py").is_file():
        p.error(f"--published: {a.published!r} is not a clone of the published repository (no flows/mcnf.py)")
    if a.render:
        res = json.loads(Path(a.render).read_text())
        tag = "" if res["device"] == "cpu" else "_cuda"
        write_page(res, Path(a.md or ROOT / f"docs/benchmark{tag}.md"))
        return 0
    device = resolve_device(a.dev)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.probe:
        print(_probe(a.probe, device))
        return 0
    if a.probe_compile:
        r = train_run(a.probe_compile, 2, device, compile_ode=True)  # first and second step
        print(r["first_step_s"], r["steady_step_s"])
        return 0
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    res = dict(
        device=name,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        platform=platform.platform(),
        command=shlex.join(
            ["python", "-m", "benchmarks.benchmark", *(sys.argv[1:] if argv is None else argv)]
        ),
    )
    print(f"timing training steps on {name} ...", flush=True)
    res["steps"] = time_steps(a.reps, a.steps, device)
    for k in res["steps"]:
        res["steps"][k]["peak_mib"], res["steps"][k]["baseline_mib"] = peak_memory(k, device)
    print("cost of one evaluation ...", flush=True)
    res["eval_cost"] = {M: eval_cost(M, device) for M in ("Sphere", "Hyperboloid")}
    print("grid evaluation ...", flush=True)
    res["grid_500_seconds"] = grid_seconds(device)
    res["time_to_kl_0.1"] = {}
    if a.ttq_epochs:
        for M in ("Sphere", "Hyperboloid"):
            for label, s in [("default", DEFAULT_SETTINGS[M]), ("reference", REFERENCE_SETTINGS[M])]:
                print(f"time to quality {M} {label} ...", flush=True)
                res["time_to_kl_0.1"][f"{M}/{label}"] = time_to_quality(M, s, device, a.ttq_epochs)
            print(f"time to quality {M} fm ...", flush=True)
            res["time_to_kl_0.1"][f"{M}/default fm"] = time_to_quality_fm(
                M, device, a.ttq_steps_fm, eval_every=50
            )
    if a.published:
        res["published"] = published(Path(a.published).resolve(), device, a.threads, a.ttq_epochs)
    tag = "" if device.type == "cpu" else "_" + device.type
    json_path = Path(a.json or ROOT / f"benchmarks/results{tag}.json")
    md_path = Path(a.md or ROOT / f"docs/benchmark{tag}.md")
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    write_page(res, md_path)
    return 0


def write_page(res, md_path):
    """The page of a results dict (the other scripts' sections kept)."""
    md = render(res)
    md_path.parent.mkdir(exist_ok=True)
    old = md_path.read_text() if md_path.is_file() else ""
    md_path.write_text(md)
    keep_other_sections(old, md_path)
    print(md)


def keep_other_sections(old_text, md_path):
    """Put back the sections other benchmark scripts wrote into the page (this script rewrites the rest):
    benchmarks.fused's, benchmarks.dimensions' and benchmarks.regularization's."""
    from scripts.pages import replace_block

    for begin, end in (sections.FUSED, sections.DIMENSIONS, sections.REGULARIZATION):
        if begin in old_text and end in old_text:
            block = old_text.split(begin, 1)[1].split(end, 1)[0].strip("\n").splitlines()
            replace_block(md_path, begin, end, [*block, ""])


#: the flags that decide ``--compile auto`` for the benchmark's runs (maximum likelihood, exact divergence)
AUTO = argparse.Namespace(compile="auto", objective="mle", divergence="exact")


def published_lines(pub, ttq, cost):
    lines = ["", "## Against the published code", "",
             "The published code itself (a clone of github.com/CUAI/Neural-Manifold-Ordinary-Differential-"
             "Equations at the path given to `--published`), driven by `benchmarks/published.py` in its own "
             "process with the loop of its `main_density.py` (lr 1e-2, batch 200, its solvers: dopri5 at "
             "1e-3 with the adjoint on H^2, rk4 step 1/16 x 4 charts with the adjoint on S^2), one thread; "
             "this project's default configuration over the same epochs in this process, eager and with "
             "`--compile on`. Mean seconds per training step over the whole run (the published "
             "hyperboloid's adaptive solver takes more steps as the model sharpens); for the compiled "
             "runs the median step, and the mean step with the compilation of a fresh process added "
             "(the table above: warm inductor cache / cold cache, the first run on a machine). Figures "
             "and evaluation are not timed.", "",
             "| run | epochs | published s / step | default s / step | speed-up | compiled s / step | speed-up | "
             "with the compilation, warm / cold | speed-up, warm / cold |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    auto = []
    for k, r in pub["rows"].items():
        P, d, c, n = (
            r["published"]["mean_step_s"],
            r["default"]["mean_step_s"],
            r["compiled"],
            r["default"]["epochs"],
        )
        st = c["steady_step_s"]
        cc = cost.get(k.split("/")[0], {})
        w, co = (
            (st + cc.get("compile_seconds_warm", float("nan")) / n),
            (st + cc.get("compile_seconds_cold", float("nan")) / n),
        )
        lines.append(f"| {k} | {n} | {P:.4f} | {d:.4f} | {P / d:.1f}x | {st:.4f} | {P / st:.1f}x | "
                     f"{w:.4f} / {co:.4f} | {P / w:.1f}x / {P / co:.1f}x |")  # fmt: skip
        M = k.split("/")[0]
        dyn = build(M, DEFAULT_SETTINGS[M], torch.device("cpu")).dynamics
        fused, native = dyn.runs_fused(), dyn.runs_native("cpu", torch.float32)
        first, later = (
            resolve_compile(AUTO, n, torch.device("cpu"), warm=hot, fused=fused, native=native)
            for hot in (False, True)
        )
        auto.append((k, n, P / (co if first else d), P / (w if later else d)))
    lines += ["", f"What the default `--compile auto` runs (train/config.py `resolve_compile`): the first time on a "
              f"machine it compiles from {COMPILE_MIN_EPOCHS} epochs, and once the machine's inductor cache holds "
              f"the run's graph (an earlier compiled run of the same configuration, train/compile_cache.py) from "
              f"{COMPILE_MIN_EPOCHS_WARM}; a model whose eager ODE function is flows/fused.py's (the exact "
              f"divergence on the sphere and the hyperboloid) never where that module's C++ kernel runs (flows/native.py, "
              f"the CPU with a C++ compiler, as here) and from {COMPILE_MIN_EPOCHS_FUSED[0]} and {COMPILE_MIN_EPOCHS_FUSED[1]} over its numpy "
              "kernel; otherwise it runs eagerly. So the default's speed-up, compilation included, first time / later runs: "
              + "; ".join(f"{k} ({n} epochs) {a:.1f}x / {b:.1f}x" for k, n, a, b in auto) + "."]  # fmt: skip
    t = pub.get("ttq_sphere")
    if t:
        last = t["evals"][-1] if t["evals"] else {}
        reached = last and last["kl"] < 0.1
        ours = ttq.get("Sphere/default", {})
        sec = (
            f"{last['seconds']:.1f} s ({last['epoch']} epochs, KL {last['kl']:.3f})"
            if reached
            else (f"not reached in {t['epochs_run']} epochs ({t['train_seconds']:.0f} s)")
        )
        lines += ["", f"Time to test KL < 0.1 on S^2 4wrapped (same 4000 test points and evaluation cadence as "
                  f"the time-to-quality table; the published model scored with its own solver): published "
                  f"code {sec}"]  # fmt: skip
        if reached and ours.get("seconds"):
            lines[-1] += (
                f"; this project's default {ours['seconds']:.1f} s ({ours['epochs']} epochs): "
                f"{last['seconds'] / ours['seconds']:.0f}x shorter."
            )
        else:
            lines[-1] += "."
    return lines


def render(res):
    s = res["steps"]
    lines = [f"# Benchmark on {res['device']}", "",
             f"Produced by `{res.get('command', 'python -m benchmarks.benchmark')}` (torch {res['torch']}, "
             f"{res['threads']} threads). "
             "Batch 200, float32; medians over interleaved repetitions. Memory (CPU): a fresh process builds "
             "the model, draws the batches (and compiles, for the compiled rows) and runs 3 steps; baseline "
             "is its peak RSS before the steps (Python, torch and its libraries), model peak the growth of "
             "the peak RSS during the steps. GPU: `torch.cuda.max_memory_allocated` of the steps.", "",
             "| configuration | s / step | NFE fwd | NFE bwd | baseline MiB | model peak MiB | speed-up vs reference |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, v in s.items():
        ref = s[k.split("/")[0] + "/reference"]["sec_per_step"]
        own = v["peak_mib"] - v.get("baseline_mib", 0.0)
        lines.append(f"| {k} | {v['sec_per_step']:.4f} | {v['nfe_forward']:.0f} | {v['nfe_backward']:.0f} | "
                     f"{v.get('baseline_mib', float('nan')):.0f} | {own:.1f} | {ref / v['sec_per_step']:.1f}x |")  # fmt: skip
    if "eval_cost" in res:
        lines += ["", "Cost of one evaluation of the ODE function with its exact divergence, forward and backward, "
                  "batch 200 (milliseconds, median), against the bare network (the 32x3 tanh MLP of [x, t], "
                  "`VectorField.ambient`) forward and backward on the same points; `--compile` compiles the "
                  "first (`MCNF.compile_ode`):", "",
                  "| manifold | bare network | network + n JVPs | eager | eager / network | compiled | "
                  "compiled / network | compile s, cold cache | compile s, warm cache |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for M, c in res["eval_cost"].items():
            jvp = f"{c['jvp_ms']:.3f} ({c['jvp_ms'] / c['bare_ms']:.1f}x)" if "jvp_ms" in c else ""
            lines.append(f"| {M} | {c['bare_ms']:.3f} | {jvp} | {c['eager_ms']:.3f} | {c['eager_ms'] / c['bare_ms']:.1f}x | "
                         f"{c['compiled_ms']:.3f} | {c['compiled_ms'] / c['bare_ms']:.1f}x | "
                         f"{c['compile_seconds_cold']:.1f} | {c['compile_seconds_warm']:.1f} |")  # fmt: skip
        lines += ["", "Network + n JVPs: the same network with its directional derivatives along the n tangent "
                  "directions (`VectorField.ambient_jvp`, forward-mode written out), forward and backward: "
                  "what any exact divergence through this network computes, the manifold's geometry excluded; "
                  "eager minus it is the chart calculus and the projection."]  # fmt: skip
        lines += ["", "Compile s: what compiling costs a training run of the default configuration, the first "
                  "training step minus the second in a fresh process; cold: an empty inductor cache "
                  "(`TORCHINDUCTOR_CACHE_DIR`), the first run on a machine; warm: the cache the cold process "
                  "filled, as for every later run. (One graph with its backward pass serves every chart and "
                  "rk4 stage, flows/dynamics.py.)"]  # fmt: skip
    if "published" in res:
        lines += published_lines(res["published"], res.get("time_to_kl_0.1", {}), res.get("eval_cost", {}))
    lines += ["", "500x500 density grid (`flows.FIGURE_SOLVER`, float32, random-init model):", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in res["grid_500_seconds"].items()]
    if res["time_to_kl_0.1"]:
        lines += ["", "Time to quality (training wall seconds until test KL < 0.1 nats, lr 1e-2 (fm rows: "
                  "`--objective fm`'s preset field, batch 1024 and AdamW lr 2e-3, constant, raw weights), evaluated every "
                  "10 epochs (fm rows: every 50 steps) on 4000 test points; evaluation time excluded; the last column is the mean training step over "
                  "the run, which includes the growth of adaptive solvers' NFE as the model sharpens):", "",
                  "| run | seconds | epochs | KL at stop | mean s / step |", "|---|---|---|---|---|"]  # fmt: skip
        for k, v in res["time_to_kl_0.1"].items():
            sec = f"{v['seconds']:.1f}" if v["seconds"] is not None else v.get("note", "not reached")
            lines.append(
                f"| {k} | {sec} | {v['epochs']} | {v['kl']:.3f} | {v.get('sec_per_step', float('nan')):.4f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m benchmarks.benchmark"))
