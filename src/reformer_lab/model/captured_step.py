"""A whole training step of a `ReformerLM` (forward, chunked loss, reversible backward) recorded
once as a CUDA graph and replayed, for inputs of one fixed shape.

Why: a step launches ~2,000 kernels (base @ 64K) and many are small; each costs the host tens
of microseconds of Python, so the GPU waits for the host for part of every step (most of a
small model's). A replay launches the recorded kernels with no Python in between.

What changes for the caller:
- inputs and targets are copied into static buffers, so every call has the captured shape;
- the LSH cores run staged (`LSHAttentionCore.stage_rotations`): each call counts the step
  and draws its rotations outside the graph, exactly as the eager step would, so a captured
  run hashes identically to an eager one (same `hash_step`, same buckets);
- the parameters' `.grad` tensors belong to the graph and each replay overwrites them (no
  accumulation); where something sets them to None between calls (Lightning does before
  every validation, `on_validation_model_zero_grad`), the next call puts the graph's back;
- the graph's memory pool stays reserved while the step object lives.
Dropout is refused: the reversible recompute replays its masks from saved RNG states, which
a graph cannot read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention.lsh import LSHAttentionCore
from .lm import LMLoss, ReformerLM, check_token_range


class CapturedTrainingStep:
    """`step(inputs, targets)` = `model.loss(inputs, targets).loss.backward()` under autocast,
    replayed from a CUDA graph; returns the loss (a graph-owned scalar: copy it to keep it;
    `result` holds the whole `LMLoss`, token and correct counts too).

    inputs, targets: (B, N) int64 tokens, the shape every call must have. `warmup_steps`
    eager steps (on a side stream, as CUDA graphs require) compile the kernels and make the
    staged rotation buffers first; they are training steps of their own for the hash counter
    only, which is rewound, so the first replay hashes as the first eager step would.
    """

    def __init__(
        self,
        model: ReformerLM,
        inputs: Tensor,
        targets: Tensor,
        *,
        autocast_dtype: torch.dtype | None = torch.bfloat16,
        warmup_steps: int = 1,
    ) -> None:
        _check_capturable(model, inputs, targets, warmup_steps)
        self.model, self.autocast_dtype = model, autocast_dtype
        self.inputs, self.targets = inputs.clone(), targets.clone()  # static (B, N) buffers
        self.cores = [m for m in model.modules() if isinstance(m, LSHAttentionCore)]
        for core in self.cores:
            core.stage_rotations()
        start_steps = [core.steps_counted for core in self.cores]

        side = torch.cuda.Stream(device=inputs.device)
        side.wait_stream(torch.cuda.current_stream(inputs.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                model.zero_grad(set_to_none=True)
                self._next_rotations()
                self._forward_backward()
        torch.cuda.current_stream(inputs.device).wait_stream(side)
        _release_cublas_workspaces()  # so the capture makes its workspaces in the graph's pool
        torch.cuda.empty_cache()  # the warm-ups' cached blocks: the graph's pool needs the room

        model.zero_grad(set_to_none=True)  # the backward in the graph makes graph-owned grads
        self.graph = torch.cuda.CUDAGraph()
        # Captured on the warm-ups' stream: torch keeps a cuBLAS workspace per (thread, stream)
        # (32 MiB on Hopper), so a stream of its own would add two more. The forward runs on
        # this thread and the backward on autograd's, each with its own workspace; released
        # between the two, the forward's block in the graph's pool is the one the backward's
        # takes, so a replay holds one workspace, not two.
        with torch.cuda.graph(self.graph, stream=side):
            self.result = self._forward_backward()  # LMLoss of graph-owned tensors
        self.loss = self.result.loss
        self.grads = [(p, p.grad) for p in model.parameters() if p.grad is not None]
        for core, steps in zip(self.cores, start_steps):  # rewind: warm-ups do not count
            core.set_steps_counted(steps)

    def _forward_backward(
        self, inputs: Tensor | None = None, targets: Tensor | None = None
    ) -> LMLoss:
        """Forward and loss under autocast, the forward's cuBLAS workspace released, backward;
        the same in the warm-ups and in the capture (of the static buffers, by default).
        Returns the `LMLoss`, its loss detached."""
        inputs = self.inputs if inputs is None else inputs
        targets = self.targets if targets is None else targets
        device_type = inputs.device.type
        enabled = self.autocast_dtype is not None
        with torch.autocast(device_type, self.autocast_dtype, enabled=enabled, cache_enabled=False):
            out = self.model.loss(inputs, targets)
        _release_cublas_workspaces()
        out.loss.backward()
        return out._replace(loss=out.loss.detach())

    def takes(self, inputs: Tensor, targets: Tensor) -> bool:
        """Whether inputs and targets have the captured shape (else see `eager`)."""
        return inputs.shape == self.inputs.shape and targets.shape == self.targets.shape

    def eager(self, inputs: Tensor, targets: Tensor) -> LMLoss:
        """The same step run eagerly, for inputs of another shape (say, an epoch's shorter
        last batch): the step counted and its rotations drawn as a replay would, the
        gradients written into the graph's `.grad` tensors (zeroed first), which the next
        replay overwrites again. Returns the `LMLoss`, its loss detached."""
        check_token_range(inputs, self.model.cfg.vocab_size)
        self._attach_grads()
        self.model.zero_grad(set_to_none=False)
        self._next_rotations()
        return self._forward_backward(inputs, targets)

    def _attach_grads(self) -> None:
        """Make each parameter's `.grad` the tensor the graph writes again, should something
        have replaced it or set it to None since (a replay writes only into its own)."""
        for param, grad in self.grads:
            if param.grad is not grad:
                param.grad = grad

    def _next_rotations(self) -> None:
        for core in self.cores:
            core.next_staged_step()

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """One replay; returns the loss (`self.result` holds the whole graph-owned LMLoss)."""
        if not self.takes(inputs, targets):
            raise ValueError(
                f"a captured step takes inputs and targets of shape {tuple(self.inputs.shape)}; "
                f"got {tuple(inputs.shape)} and {tuple(targets.shape)}"
            )
        check_token_range(inputs, self.model.cfg.vocab_size)  # the graph cannot (a sync)
        self._attach_grads()
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        self._next_rotations()
        self.graph.replay()
        return self.loss

    def release(self) -> None:
        """Return the LSH cores to the eager mode and drop the graph (and its memory pool)."""
        for core in self.cores:
            core.stage_rotations(False)
        self.graph.reset()


def _check_capturable(model: ReformerLM, inputs: Tensor, targets: Tensor, warmup: int) -> None:
    """Bad input fails here, before any step runs."""
    if not inputs.is_cuda:
        raise ValueError(f"a captured step needs CUDA tensors; the inputs are on {inputs.device}")
    if inputs.shape != targets.shape or inputs.dim() != 2:
        raise ValueError(
            f"inputs and targets must be (B, N) of one shape; got {tuple(inputs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if any(p.device != inputs.device for p in model.parameters()):
        raise ValueError(f"the model's parameters must be on {inputs.device}, as the inputs")
    if not model.training:
        raise ValueError("a captured training step needs the model in training mode")
    if model.cfg.dropout > 0:
        raise ValueError(
            f"dropout {model.cfg.dropout} cannot be captured (the reversible recompute replays "
            "its masks from RNG states a CUDA graph cannot read); use dropout=0"
        )
    if warmup < 1:
        raise ValueError(f"warmup_steps must be >= 1 (kernels compile there); got {warmup}")


def _release_cublas_workspaces() -> None:
    """Free the idle cuBLAS workspaces (torch's private hook; without it, keep them). Inside a
    capture the freed block returns to the graph's pool, reused in stream order. (Eagerly, at
    every step, the same release cost base @ 64K 11 ms on an H200: not done there.)"""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
