"""A run's evaluation and model selection: exact metrics on the evaluation points, and the best
validation checkpoint of tasks that have a validation split (the test split waits for the end)."""

from __future__ import annotations

import copy
import json
import time

import torch

from utils import UserError

from .distributed import gather_cat


class Evaluation:
    """The :class:`train.loop.Trainer`'s evaluation methods (a mixin: it reads the trainer's state)."""

    @property
    def scored_model(self):
        """The weights that are evaluated, drawn and saved as "model": the EMA when there is one."""
        return self.model if self.ema is None else self.ema.model

    def eval_model(self):
        """A float64 copy of the scored model in eval mode (its eval solver is dopri5 at ``--eval_tol``).

        Float32 round-off in the ambient coordinates of far points (hyperboloid ``x_0 ~ cosh r``)
        is larger than tight tolerances, which then make adaptive solvers crawl; float64 avoids it.
        """
        return copy.deepcopy(self.scored_model).to(torch.float64).eval()

    def sharded_log_probs(self, x):
        """The scored model's log-densities at ``x``, each rank evaluating its shard (gathered in rank order)."""
        from flows import model_log_prob

        shard = x.tensor_split(self.world)[self.rank]
        return gather_cat(
            model_log_prob(self.eval_model(), shard.to(self.device), self.eval_chunk), self.world
        )

    def sharded_metrics(self, x, with_truth: bool, log_probs=None):
        """Evaluation metrics on ``x`` (from its ``log_probs`` when given, else :meth:`sharded_log_probs`)."""
        from flows import metrics_from_log_probs

        lp = self.sharded_log_probs(x) if log_probs is None else log_probs
        truth = self.task.truth(x) if with_truth else None
        return metrics_from_log_probs(lp, truth)

    def evaluate(self, epoch, loss):
        """Score the model at ``epoch``: the validation split (keeping the best weights) when the task has
        one, else the test points; appended to the history and to history.jsonl."""
        t0 = time.perf_counter()
        if self.task.x_select is not None:  # model selection on the validation split; the test split waits
            v = self.sharded_metrics(self.task.x_select, with_truth=False)
            m = {"val_nll": v["test_nll"], "val_nll_stderr": v["test_nll_stderr"]}
            if self.best is None or m["val_nll"] < self.best["val_nll"]:
                m["best"] = True
                state = {k: v.detach().clone() for k, v in self.scored_model.state_dict().items()}
                self.best = {"model": state, "epoch": epoch, "val_nll": m["val_nll"]}
                if self.is_main:
                    self.write_best()
        else:
            m = self.sharded_metrics(self.task.x_test, with_truth=self.task.truth is not None)
        if self.guard_log and self.guard_log[-1]["epoch"] == epoch:  # the check made at this epoch
            m["guard"] = {k: v for k, v in self.guard_log[-1].items() if k != "epoch"}
        m.update(epoch=epoch, train_loss=loss, lr=self.opt.param_groups[0]["lr"],
                 train_seconds=self.train_seconds, eval_seconds=time.perf_counter() - t0)  # fmt: skip
        self.history.append(m)
        if self.is_main:
            with open(self.out / "history.jsonl", "a") as f:
                f.write(json.dumps(m) + "\n")
        return m

    def final_metrics(self) -> dict:
        """The run's reported metrics: the last evaluation, or, with a validation split, the test split
        scored with this run's best validation weights (in memory and in checkpoint.pt, never a file's),
        which the scored model then holds."""
        if self.task.x_select is None:
            return self.history[-1]
        if self.best is None:
            raise UserError("this run has no validation record to select a model by")
        self.scored_model.load_state_dict(self.best["model"])
        self.test_log_probs = self.sharded_log_probs(self.task.x_test)
        t = self.sharded_metrics(self.task.x_test, with_truth=False, log_probs=self.test_log_probs)
        return {**t, "val_nll": self.best["val_nll"], "best_epoch": self.best["epoch"]}

    def stack_metrics(self) -> dict:
        """``--stack on`` (after :meth:`final_metrics`): the best flow stacked with KDEs of the training split,
        the weights fitted on the validation split (:class:`train.stacking.Stack`), the test split scored
        once; the flow's validation log-densities are solved again with the best weights (every rank its
        shard, as for the test split)."""
        from .stacking import Stack

        x_val, x_test = self.task.x_select.double(), self.task.x_test.double()
        lp_val = self.sharded_log_probs(self.task.x_select).double().cpu()
        stack = Stack.fit(self.task.data.train, lp_val, x_val)
        val, test = stack.log_prob(lp_val, x_val), stack.log_prob(self.test_log_probs.double().cpu(), x_test)
        return {"test_nll": -float(test.mean()), "test_nll_stderr": float(test.std() / len(test) ** 0.5),
                "val_nll": -float(val.mean()), "flow_val_nll": -float(lp_val.mean()), **stack.record()}  # fmt: skip
