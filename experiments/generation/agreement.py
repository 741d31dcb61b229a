"""How often cached LSH decoding picks the same greedy tokens as full recomputation.

    python experiments/generation/agreement.py               # -> results-agreement.md here

Trains a tiny LSH ReformerLM for 150 steps on the CPU (about a minute, one thread) on a
synthetic byte corpus, then compares on held-out sequences, after a 192-token prompt:
  - teacher-forced: at each of 64 positions, given the true prefix, is the cached argmax the
    argmax of model(prefix)[:, -1]?
  - free-running: 64 greedy tokens from generate(use_cache=True) vs generate(use_cache=False).
The same numbers for the untrained model are reported for reference, and, as a yardstick for
how stable LSH predictions are at all, how often the recomputed argmax at position t (input:
the prefix up to t) equals the argmax at t of one forward over the whole 256-token sequence:
the model is causal, but LSH bucket sizes, chunk boundaries and n_buckets depend on the
tokens after t, so the training-time computation itself changes its mind when tokens are
appended.

Tasks (--task):
  sentences  (default) bytes of random sentences from a small grammar ("the old man looked at
             every bucket. "), 256 bytes per sequence: within a word the next byte is nearly
             certain, at word boundaries it is a real choice. Learnt well enough in a minute.
  repeat     a word of P symbols (P uniform in [33, 60], symbols 1..31) repeated to fill 256
             tokens; after the first copy every token is determined by the one P back, beyond the
             local window (2 * bucket_size), so only the hash buckets can find it. Loss counts
             only the determined targets. Needs far more than a minute of training to be learnt.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_lines, refuse_to_overwrite, write_atomically

from reformer_lab.model import ReformerConfig, ReformerLM
from reformer_lab.model.decoding import IncrementalDecoder

HERE = Path(__file__).resolve().parent
SEQ_LEN, PROMPT, NEW = 256, 192, 64
MIN_PERIOD, MAX_PERIOD, REPEAT_VOCAB = 33, 60, 32
SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the reformer", "a small bird"]
VERBS = ["sat on", "looked at", "ran past", "wrote about", "hashed", "sorted"]
OBJECTS = ["the mat", "a long sequence", "the red house", "every bucket", "the garden"]
ENDINGS = [". ", "! ", " again. ", " today. "]


def sentences(n: int, generator: torch.Generator) -> torch.Tensor:
    """n sequences (n, SEQ_LEN) of ASCII bytes: random grammar sentences, cut to SEQ_LEN."""

    def pick(options: list[str]) -> str:
        return options[int(torch.randint(len(options), (), generator=generator))]

    rows = []
    for _ in range(n):
        text = ""
        while len(text) < SEQ_LEN:
            text += f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}{pick(ENDINGS)}"
        rows.append(torch.tensor(list(text[:SEQ_LEN].encode("ascii"))))
    return torch.stack(rows)


def repeated_words(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences (n, SEQ_LEN) and their periods (n,)."""
    periods = torch.randint(MIN_PERIOD, MAX_PERIOD + 1, (n,), generator=generator)
    words = torch.randint(1, REPEAT_VOCAB, (n, MAX_PERIOD), generator=generator)  # (n, P_max)
    positions = torch.arange(SEQ_LEN)[None] % periods[:, None]  # (n, L)
    return words.gather(1, positions), periods


def targets_of(seq: torch.Tensor, periods: torch.Tensor | None) -> torch.Tensor:
    """Next-token targets; ignore_index (-100) at the end and, for `repeat`, in the first copy."""
    targets = torch.full_like(seq, -100)
    targets[:, :-1] = seq[:, 1:]
    if periods is None:
        return targets
    undetermined = torch.arange(SEQ_LEN)[None] < (periods[:, None] - 1)  # predicting copy 1
    return targets.masked_fill(undetermined, -100)


def batch_of(task: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (n, SEQ_LEN)."""
    if task == "sentences":
        seq = sentences(n, generator)
        return seq, targets_of(seq, None)
    seq, periods = repeated_words(n, generator)
    return seq, targets_of(seq, periods)


def build_model(task: str, seed: int) -> ReformerLM:
    cfg = ReformerConfig(
        vocab_size=128 if task == "sentences" else REPEAT_VOCAB,
        dim=64,
        depth=2,
        heads=2,
        max_seq_len=SEQ_LEN,
        bucket_size=16,
        n_hashes=4,
        attention="lsh",
        seed=seed,
    )
    torch.manual_seed(seed)
    return ReformerLM(cfg)


def train(
    model: ReformerLM, task: str, steps: int, batch: int, seed: int
) -> tuple[float, float, float]:
    """AdamW steps on fresh batches; returns (wall seconds, first loss, mean of the last 20)."""
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        inputs, targets = batch_of(task, batch, generator)
        loss = model.loss(inputs, targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    model.eval()
    return time.perf_counter() - start, losses[0], sum(losses[-20:]) / len(losses[-20:])


def top2_gap(logits: torch.Tensor, where: torch.Tensor) -> float:
    """Median gap between the two largest probabilities at the positions `where` (nan if none)."""
    top2 = torch.softmax(logits[where], -1).topk(2, dim=-1).values  # (k, 2)
    return (top2[:, 0] - top2[:, 1]).median().item() if top2.numel() else float("nan")


@torch.no_grad()
def compare(model: ReformerLM, seq: torch.Tensor) -> dict[str, float]:
    """Agreement and accuracy of cached vs recomputed greedy decoding on seq (n, SEQ_LEN)."""
    model.eval()
    truth = seq[:, PROMPT : PROMPT + NEW]  # predicted by positions PROMPT-1 .. PROMPT+NEW-2

    decoder = IncrementalDecoder(model, PROMPT + NEW)
    cached_logits = [decoder.prefill(seq[:, :PROMPT])]
    cached_logits += [decoder.step(seq[:, t]) for t in range(PROMPT, PROMPT + NEW - 1)]
    cached_tf = torch.stack(cached_logits, 1).argmax(-1)  # (n, NEW)
    recomputed_logits = torch.stack(
        [model(seq[:, : t + 1])[:, -1] for t in range(PROMPT - 1, PROMPT + NEW - 1)], 1
    )  # (n, NEW, vocab)
    recomputed_tf = recomputed_logits.argmax(-1)  # (n, NEW)
    whole_tf = model(seq)[:, PROMPT - 1 : PROMPT + NEW - 1].argmax(-1)  # later tokens present

    prompt = seq[:, :PROMPT]
    free_c = model.generate(prompt, max_new_tokens=NEW, temperature=0.0)[:, PROMPT:]
    free_u = model.generate(prompt, max_new_tokens=NEW, temperature=0.0, use_cache=False)[
        :, PROMPT:
    ]
    differs = free_c != free_u  # (n, NEW)
    first_diff = torch.where(differs.any(1), differs.float().argmax(1), torch.tensor(NEW))
    return {
        "tf_agree": (cached_tf == recomputed_tf).float().mean().item(),
        "tf_agree_whole": (cached_tf == whole_tf).float().mean().item(),
        "tf_recomputed_vs_whole": (recomputed_tf == whole_tf).float().mean().item(),
        "tf_confidence": torch.softmax(recomputed_logits, -1).amax(-1).mean().item(),
        "tf_gap_at_disagreement": top2_gap(recomputed_logits, cached_tf != recomputed_tf),
        "tf_acc_cached": (cached_tf == truth).float().mean().item(),
        "tf_acc_recomputed": (recomputed_tf == truth).float().mean().item(),
        "free_agree": (~differs).float().mean().item(),
        "free_rows_identical": (~differs.any(1)).float().mean().item(),
        "free_first_diff": first_diff.float().mean().item(),
        "free_acc_cached": (free_c == truth).float().mean().item(),
        "free_acc_recomputed": (free_u == truth).float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["sentences", "repeat"], default="sentences")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-sequences", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results-agreement.md")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if min(args.steps, args.batch, args.eval_sequences) < 1:
        raise SystemExit("--steps, --batch and --eval-sequences must be positive")
    refuse_to_overwrite(args.out, args.overwrite)
    torch.set_num_threads(args.threads)

    model = build_model(args.task, args.seed)
    eval_generator = torch.Generator().manual_seed(10**6 + args.seed)
    eval_seq, _ = batch_of(args.task, args.eval_sequences, eval_generator)
    before = compare(model, eval_seq)
    train_s, first_loss, train_loss = train(model, args.task, args.steps, args.batch, args.seed)
    after = compare(model, eval_seq)

    def row(name: str, key: str, fmt: str = "{:.3f}") -> str:
        return f"| {name} | {fmt.format(before[key])} | {fmt.format(after[key])} |"

    cfg = model.cfg
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = "\n".join(
        [
            "# Cached LSH decoding vs full recomputation: greedy agreement",
            "",
            f"Command (from the repository root): `{command}`",
            "",
            *machine_lines(args.threads),
            f"- model: LSH ReformerLM dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, "
            f"bucket {cfg.bucket_size}, n_hashes {cfg.n_hashes}, n_buckets default "
            f"(32 at length 256), vocab {cfg.vocab_size}, {model.num_parameters():,} parameters",
            f"- training: task `{args.task}` (see agreement.py), {args.steps} AdamW steps of "
            f"batch {args.batch} x {SEQ_LEN}, lr 3e-3, {train_s:.0f} s wall; loss "
            f"{first_loss:.3f} nats at the first step, {train_loss:.3f} mean of the last 20",
            f"- evaluation: {args.eval_sequences} held-out sequences, prompt {PROMPT} tokens, "
            f"{NEW} greedy tokens",
            "",
            "| measure | untrained | trained |",
            "|---|---|---|",
            row("teacher-forced: cached argmax == recomputed argmax", "tf_agree"),
            row(
                "reference: recomputed (prefix) == whole-sequence forward",
                "tf_recomputed_vs_whole",
            ),
            row("teacher-forced: cached argmax == whole-sequence forward", "tf_agree_whole"),
            row("mean top-1 probability of the recomputed prediction", "tf_confidence"),
            row(
                "median top-1 minus top-2 probability (recomputed) where they disagree",
                "tf_gap_at_disagreement",
            ),
            row("teacher-forced accuracy, cached", "tf_acc_cached"),
            row("teacher-forced accuracy, recomputed", "tf_acc_recomputed"),
            row("free-running: fraction of the 64 tokens equal", "free_agree"),
            row("free-running: fraction of sequences fully identical", "free_rows_identical"),
            row(
                "free-running: mean index of the first differing token", "free_first_diff", "{:.1f}"
            ),
            row("free-running accuracy vs the true continuation, cached", "free_acc_cached"),
            row(
                "free-running accuracy vs the true continuation, recomputed", "free_acc_recomputed"
            ),
            "",
        ]
    )
    write_atomically(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
