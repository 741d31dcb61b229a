"""Shared-QK LSH attention (sec 2, 3 and appendix A).

Per head and hash round r:
  1. hash the shared query/key vectors, h(x) = argmax([xR; -xR]);
  2. sort positions by (bucket, position); padding sorts after every real token;
  3. split the sorted sequence into chunks of `bucket_size`; each chunk attends to itself and
     the chunk before it (`chunked.py`), with causal masks on the original positions;
  4. undo the sort, giving o_r(i) and its log-normaliser z_r(i).
Rounds are merged as in appendix A: o(i) = sum_r exp(z_r(i) - logsumexp_r' z_r'(i)) o_r(i).

Known subtlety (causal mode): which earlier keys share a query's chunk depends on the hashes
of other tokens, later ones included, so chunk *membership* is not causal. Causality holds for
the computation: no output depends through any score or value on a later position, so the
gradient of output i with respect to input j > i is exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .hashing import (
    bucket_factors,
    default_n_buckets,
    draw_rotations,
    hash_buckets,
    mix_seed,
    sort_order,
    sortable_ids,
)
from .lsh_rounds import HashRounds, attend_all_rounds

EVAL_STEP = -1  # the step id of the fixed eval rotations


class LSHAttentionCore(nn.Module):
    """(B, H, L, d) queries, keys, values -> (B, H, L, d), L a multiple of bucket_size.

    Keys None: the shared-QK keys, the queries normalised (sec 2), formed where they are used.

    `plan` is a per-call dict in which the hashing is stored the first time and read back
    when the reversible backward recomputes the layer, so it sees the very same buckets: the
    int32 sort order (4 bytes a position, head and round) when all heads are computed at once,
    the bucket ids (2 bytes: `sortable_ids`) when they are computed in groups, as they are
    where memory is short; the order is then re-formed from them by a second sort.
    """

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        bucket_size: int,
        n_hashes: int,
        causal: bool,
        n_buckets: int | None,
        allow_duplicate_attention: bool,
        attend_across_buckets: bool,
        seed: int,
        layer_index: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.bucket_size, self.n_hashes, self.causal = bucket_size, n_hashes, causal
        self.n_buckets = n_buckets
        self.allow_duplicate_attention = allow_duplicate_attention
        self.attend_across_buckets = attend_across_buckets
        self.seed, self.layer_index, self.backend = seed, layer_index, backend
        # Training steps taken: the training rotations are a function of it, and it is saved
        # with checkpoints, so a resumed run hashes exactly as the uninterrupted one.
        self.register_buffer("hash_step", torch.zeros((), dtype=torch.long))
        self._next_step = 0  # host copy of hash_step: reading the buffer would sync the GPU
        self._eval_rotations: dict[tuple, list[Tensor]] = {}
        # Set by `stage_rotations` for a CUDA-graph-captured step: the training rotations are
        # read from these buffers, which `next_staged_step` refills outside the graph.
        self._staged: dict[tuple, list[Tensor]] | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._next_step = int(self.hash_step)  # resume from the checkpoint's step

    # --- hashing --------------------------------------------------------------------
    @property
    def steps_counted(self) -> int:
        """Training steps hashed so far (the host copy of `hash_step`)."""
        return self._next_step

    def set_steps_counted(self, steps: int) -> None:
        """Set the step counter, host copy and buffer alike."""
        self._next_step = steps
        self.hash_step.fill_(steps)

    def advance_step(self) -> int:
        """Count one more training step; returns the step to hash with."""
        self.set_steps_counted(self._next_step + 1)
        return self._next_step - 1

    def stage_rotations(self, staged: bool = True) -> None:
        """Staged mode, for a training step captured in a CUDA graph (`captured_step.py`).

        A graph replays the kernels it recorded with the values they had at capture, so a
        rotation drawn, or a step counted, inside it would be the same at every replay. Staged,
        the forward pass neither counts the step nor draws: it reads static rotation buffers
        (made on the first call, before capture) which `next_staged_step` refills, outside the
        graph, with the very rotations the eager step would draw. `staged=False` returns to
        the eager mode."""
        self._staged = {} if staged else None

    def next_staged_step(self) -> None:
        """Staged mode: count the next training step and draw its rotations into the buffers."""
        step = self.advance_step()
        for (factors, n_hashes, device), buffers in self._staged.items():
            for buffer, rotation in zip(buffers, self._draw(factors, n_hashes, device, step)):
                buffer.copy_(rotation)

    def _draw(
        self, factors: tuple[int, ...], n_hashes: int, device: torch.device, step: int
    ) -> list[Tensor]:
        """Every head's rotations for a step (EVAL_STEP: the fixed eval ones), from the seed."""
        seed = mix_seed(self.seed, self.layer_index, step)
        return draw_rotations(factors, self.heads, n_hashes, self.head_dim, seed, device)

    def rotations(
        self, factors: tuple[int, ...], n_hashes: int, device: torch.device, step: int
    ) -> list[Tensor]:
        """Rotations of every head for a training step, or the fixed eval ones (step -1)."""
        if step != EVAL_STEP and self._staged is not None:
            key = (factors, n_hashes, device)
            if key not in self._staged:
                if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                    raise RuntimeError(
                        "staged LSH rotations must exist before the CUDA graph is captured: "
                        "run one step at the captured shape first"
                    )
                self._staged[key] = self._draw(factors, n_hashes, device, step)
            return self._staged[key]
        if step != EVAL_STEP:
            return self._draw(factors, n_hashes, device, step)
        key = (factors, n_hashes, device)
        if key not in self._eval_rotations:
            self._eval_rotations[key] = self._draw(factors, n_hashes, device, EVAL_STEP)
        return self._eval_rotations[key]

    def factors(self, length: int) -> tuple[int, ...]:
        """The factors of the hash for a (padded) length: their product is the bucket count."""
        return bucket_factors(self.n_buckets or default_n_buckets(length, self.bucket_size))

    def buckets(
        self,
        qk: Tensor,
        key_valid: Tensor | None,
        n_hashes: int,
        heads: slice | None = None,
        step: int = EVAL_STEP,
    ) -> Tensor:
        """(B, h, L, d) -> (B, h, R, L) int32 bucket ids of heads `heads` (all by default) at a
        training step (or with the eval rotations); padding gets the id one past the last."""
        heads = heads if heads is not None else slice(0, self.heads)
        factors = self.factors(qk.shape[2])
        rotations = [r[heads] for r in self.rotations(factors, n_hashes, qk.device, step)]
        return hash_buckets(qk, rotations, factors, key_valid, self.backend)

    # --- attention ------------------------------------------------------------------
    def forward(
        self,
        q: Tensor,
        k: Tensor | None,
        v: Tensor,
        key_valid: Tensor | None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
        heads: slice | None = None,
        into: Tensor | None = None,
    ) -> Tensor:
        """into: a (B, H, L, d) tensor to write the output into (`attend_all_rounds`)."""
        heads = heads if heads is not None else slice(0, self.heads)
        R = n_hashes or self.n_hashes
        C = self.bucket_size
        kept = _kept_hashing(plan, heads.start)
        if kept is not None:
            ids, order = kept  # (B, h, R, L) each, one of them perhaps None
            R = (ids if order is None else order).shape[2]
        else:
            step = EVAL_STEP
            if self.training:
                # One fresh draw per forward pass: the first head group advances the step,
                # the others hash with the same rotations (staged: `next_staged_step` did).
                if heads.start == 0 and self._staged is None:
                    self.advance_step()
                step = self._next_step - 1
            with torch.no_grad():
                buckets = self.buckets(q.detach(), key_valid, R, heads, step)  # (B, h, R, L)
                n_ids = math.prod(self.factors(q.shape[2])) + 1  # and the padding's
                ids = sortable_ids(buckets, n_ids)
                del buckets
                order = sort_order(ids)  # (B, h, R, L) int32
            if plan is not None:
                # Heads in groups (memory is short): keep the ids and sort again in the
                # backward pass. All heads at once: keep the order (twice the bytes, no sort).
                grouped = heads.stop - heads.start < self.heads
                plan[f"ids{heads.start}"] = (
                    ids if grouped or not self.attend_across_buckets else None
                )
                plan[f"order{heads.start}"] = None if grouped else order
        if order is None:
            with torch.no_grad():
                order = sort_order(ids)

        rounds = HashRounds(
            order=order,
            key_valid=key_valid,
            buckets=None if self.attend_across_buckets else ids.to(torch.int32),
            chunk_size=C,
            causal=self.causal,
            dedup=not self.allow_duplicate_attention,
            backend=self.backend,
        )
        return attend_all_rounds(q, k, v, rounds, into)  # (B, H, L, d)


def _kept_hashing(plan: dict | None, first_head: int) -> tuple[Tensor | None, Tensor | None] | None:
    """(bucket ids, sort order) that a plan holds for the head group from `first_head`, either
    perhaps None; None when it holds neither (the first call)."""
    if plan is None or f"ids{first_head}" not in plan:
        return None
    return plan[f"ids{first_head}"], plan[f"order{first_head}"]
