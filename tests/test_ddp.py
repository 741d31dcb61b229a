"""`trainer=ddp` with reversible layers: two CPU processes (gloo) through the real CLI.

Each rank records its synchronised gradients at every step, the first batch it saw and its
final weights (DDPSyncProbe); the test asserts the ranks saw different data yet kept
bit-identical gradients and weights, i.e. the all-reduce ran and no parameter was "marked
ready twice" by the reversible backward.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.conftest import TINY, run_cli


class DDPSyncProbe(Callback):
    """Saves, per rank, each step's gradients, the first batch and the final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.grads: list[torch.Tensor] = []
        self.first_batch: torch.Tensor | None = None
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            self.first_batch = batch["inputs"].detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        self.grads.append(torch.cat(grads).clone())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {
                "grads": self.grads,
                "first_batch": self.first_batch,
                "initial": self.initial,
                "final": final,
                "world_size": trainer.world_size,
                "n_parameters": sum(p.numel() for p in pl_module.parameters()),
            },
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_reversible_layers_in_sync(tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    done = run_cli(
        [
            "reformer_lab.cli.train",
            *TINY,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=3",
            "model.depth=2",
            "model.reversible=true",
            "data.n_train=48",
            "test_after_fit=false",
            "hydra.run.dir=run",
            f"+callbacks.sync_probe={{_target_: tests.test_ddp.DDPSyncProbe, out_dir: {probe_dir}}}",
        ],
        cwd=tmp_path,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "marked ready twice" not in done.stderr

    ranks = [torch.load(probe_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"])  # sharded data
    assert len(ranks[0]["grads"]) == len(ranks[1]["grads"]) == 3
    for g0, g1 in zip(ranks[0]["grads"], ranks[1]["grads"]):
        assert g0.numel() == ranks[0]["n_parameters"]  # every parameter got a gradient
        assert torch.equal(g0, g1)  # all-reduced: identical on both ranks
    for name, w0 in ranks[0]["final"].items():
        assert torch.equal(w0, ranks[1]["final"][name]), name
    changed = [
        n for n, w in ranks[0]["final"].items() if not torch.equal(w, ranks[0]["initial"][n])
    ]
    assert any("layers.1" in n for n in changed)  # the reversible stack was trained

    outcome = json.loads((tmp_path / "run" / "result.json").read_text())  # written by rank 0 only
    assert outcome["status"] == "ok" and outcome["global_step"] == 3
