"""A finished run's outputs: metrics.json, the training curve, density figures, samples, frames."""

from __future__ import annotations

import time

import numpy as np
import torch

import utils

from .objectives import accurate_figures
from .rundir import json_safe


class Outputs:
    """The :class:`train.loop.Trainer`'s output methods (a mixin: it reads the trainer's state)."""

    def figure_log_prob(self):
        from flows import figure_model

        accurate = accurate_figures(self.settings.optim.objective)  # no training step the figure can reuse
        m = figure_model(self.scored_model, accurate=accurate)
        dtype = torch.float64 if accurate else torch.float32
        return lambda x: m.log_prob(x.to(self.device, dtype))

    @torch.no_grad()
    def model_samples(self, n):
        return self.eval_model().sample(n).cpu()

    def save_frame(self, epoch):
        from viz.figures import density_figure

        folder = self.out / "contsave"
        folder.mkdir(exist_ok=True)
        density_figure({f"epoch {epoch}": self.figure_log_prob()}, self.settings.model.manifold,
                       folder / f"{epoch:06d}.png", res=min(self.settings.run.res, 200))  # fmt: skip

    def finish(self):
        run, model, epochs = self.settings.run, self.settings.model, self.settings.optim.epochs
        in_sync = self.ranks_in_sync() if self.world > 1 else True
        last = self.final_metrics()  # (train/evaluation.py: the best validation weights, where selected)
        stack = self.stack_metrics() if run.stack == "on" else None  # every rank solves its shard
        if not self.is_main:
            return
        keys = (
            "test_nll",
            "test_nll_stderr",
            "n_test",
            "entropy",
            "kl",
            "kl_stderr",
            "val_nll",
            "best_epoch",
        )
        steps = max(self.nfe["steps"], 1)
        metrics = {
            **{k: last[k] for k in keys if k in last},
            "epochs": epochs, "train_seconds": self.train_seconds,
            "seconds_per_epoch": self.train_seconds / max(epochs, 1),  # train_seconds: the whole run's
            "nfe_forward": self.nfe["forward"] / steps,
            "nfe_backward": self.nfe["backward"] / steps,
            "device": str(self.device), "ranks": self.world, "ranks_in_sync": in_sync,
            "compiled": bool(self.dynamics is not None and self.dynamics.compiled),
            "model": model.kind, "parameters": sum(p.numel() for p in self.model.parameters()),
            "args": self.saved_args(),
        }  # fmt: skip
        if stack is not None:
            metrics["stack"] = stack
        if self.guard_log:  # the solver guard's refinements, its checks, and the step the run ended with
            metrics["guard_events"] = [c for c in self.guard_log if "refined_to" in c]
            open_gaps = [f"epoch {c['epoch']}: {c['warning']}" for c in self.guard_log if "warning" in c]
            if open_gaps:
                metrics["warnings"] = open_gaps
            metrics["guard_checks"] = len(self.guard_log)
            metrics["guard_seconds"] = self.guard_seconds
            metrics["final_step_size"] = self.model.train_solver.step_size
        from viz import figures

        losses = np.array(self.losses).reshape(-1, 2).T
        label = self.objective.curve_label
        figures.training_curve(self.history, self.out / "training_curve.png", losses=losses, loss_label=label)
        if run.save:
            t0 = time.perf_counter()
            self.task.figure(self.figure_log_prob(), self.out / f"{run.dataset}_{model.manifold}.png", run.res,
                             progress=not run.quiet, model_sample=self.model_samples)  # fmt: skip
            metrics["figure_seconds"] = time.perf_counter() - t0
        if run.contsave:
            # only the frames this run wrote (a user's files in contsave/ are neither shown nor touched)
            names = [
                self.out / "contsave" / f"{e:06d}.png"
                for e in range(run.save_freq, epochs + 1, run.save_freq)
            ]
            frames = [f for f in names if f.is_file()]
            metrics["gif_frames"] = figures.make_gif(frames, self.out / "training.gif")
        if run.samples:
            x = self.model_samples(run.samples)
            np.save(self.out / "samples.npy", x.numpy())
            draw = figures.samples_figure if model.dim == 2 else figures.marginals_figure
            draw(self.task.sample_panels(x, run.samples), model.manifold, self.out / "samples.png")
        utils.atomic_write_json(json_safe(metrics), self.out / "metrics.json")
        print(self.task.done_line(metrics, self.train_seconds, self.out))
