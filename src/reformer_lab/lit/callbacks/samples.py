"""Sampling helpers shared by `SampleLogger` and `reformer-generate`: text and image samples.

Text models here are byte-level: a sample is its bytes decoded as UTF-8 (errors="replace").

Image models read an image as L = H*W*3 sub-pixels in raster order (data/images.py): the
model input is [START, x_0, ..., x_{L-2}] and position t predicts x_t. A prefix of `rows`
pixel rows is the prompt [START, x_0, ..., x_{P-1}] with P = rows*W*3, and completing the
image means drawing x_P .. x_{L-1}: L - P new tokens after a prompt of P + 1, i.e. L + 1
positions in all for a model of max_seq_len = L. The last token never goes back into the
model, so `generate_filling_context` draws all but it with `model.generate` and it from the
logits of the last position of the full L-long input.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reformer_lab.model import ReformerLM
from reformer_lab.model.decoding import next_token
from reformer_lab.model.generation import eval_mode

START_VALUE = 0
"""The value in front of every image sequence (data/images.py: START_VALUE)."""
GRID_GAP = 2
"""White pixels between the images of a grid."""
PREFIX_FILL = 128
"""Grey for the pixels a prefix leaves unknown."""


def bytes_to_text(tokens: Tensor | list[int]) -> str:
    """Byte tokens (N,) -> text, invalid UTF-8 shown as U+FFFD."""
    values = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
    return bytes(values).decode("utf-8", errors="replace")


def render_tokens(tokens: Tensor | list[int], vocab_size: int) -> str:
    """Text of a sample: decoded bytes for a byte vocabulary (<= 256), else the token ids."""
    if vocab_size <= 256:
        return bytes_to_text(tokens)
    values = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
    return " ".join(str(v) for v in values)


def generate_filling_context(
    model: ReformerLM,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`model.generate`, allowing prompt + new tokens to reach max_seq_len + 1 positions.

    (B, N) -> (B, N + max_new_tokens). The token at position max_seq_len is drawn from the
    logits of the whole max_seq_len-long sequence (as generate draws the first new token
    from the prompt's), since it is never fed back.
    """
    n_prompt, limit = prompt.shape[1], model.cfg.max_seq_len
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    if n_prompt + max_new_tokens <= limit or max_new_tokens == 0:
        return model.generate(
            prompt, max_new_tokens, **sampling, use_cache=use_cache, generator=generator
        )
    if n_prompt + max_new_tokens > limit + 1:
        raise ValueError(
            f"prompt {n_prompt} + max_new_tokens {max_new_tokens} exceeds max_seq_len + 1 = "
            f"{limit + 1}: the model has no position for the extra tokens"
        )
    head = model.generate(
        prompt, max_new_tokens - 1, **sampling, use_cache=use_cache, generator=generator
    )  # (B, max_seq_len)
    with torch.no_grad(), eval_mode(model):
        logits = model(head)[:, -1]  # (B, vocab)
    last = next_token(
        logits, temperature=float(temperature), top_k=top_k, top_p=top_p, generator=generator
    )  # (B,)
    return torch.cat([head, last[:, None]], dim=1)  # (B, max_seq_len + 1)


def image_prompt(inputs: Tensor, rows: int, width: int) -> Tensor:
    """The model input of an image (L,) -> its first `rows` pixel rows as a prompt (1 + P,)."""
    return inputs[: 1 + rows * width * 3]


def complete_images(
    model: ReformerLM,
    prompts: Tensor,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, 1 + P) image prompts -> (B, L) sub-pixels of the completed images, L = max_seq_len."""
    n_new = model.cfg.max_seq_len + 1 - prompts.shape[1]
    out = generate_filling_context(
        model,
        prompts,
        n_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        use_cache=use_cache,
        generator=generator,
    )  # (B, L + 1)
    return out[:, 1:]  # (B, L): the start value dropped


def raster_to_image(values: Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """(H*W*3,) raster sub-pixels (channels interleaved) -> (H, W, 3) uint8."""
    array = values.cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    return array.astype(np.uint8).reshape(height, width, 3)


def prefix_image(image: np.ndarray, rows: int) -> np.ndarray:
    """(H, W, 3) -> the same with every row from `rows` on grey: what the model was shown."""
    shown = image.copy()
    shown[rows:] = PREFIX_FILL
    return shown


def image_grid(images: list[list[np.ndarray]], gap: int = GRID_GAP) -> np.ndarray:
    """Rows of equally sized (H, W, 3) uint8 images -> one (R*(H+gap)-gap, C*(W+gap)-gap, 3) array,
    white between images."""
    n_rows, n_cols = len(images), len(images[0])
    height, width, _ = images[0][0].shape
    grid = np.full(
        (n_rows * (height + gap) - gap, n_cols * (width + gap) - gap, 3), 255, dtype=np.uint8
    )
    for r, row in enumerate(images):
        if len(row) != n_cols:
            raise ValueError(f"grid row {r} has {len(row)} images, row 0 has {n_cols}")
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            grid[top : top + height, left : left + width] = image
    return grid


def _replace_atomically(path: Path, write) -> None:
    """Call write(temporary path) beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    _replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_png_atomically(path: Path, image: np.ndarray) -> None:
    """(H, W, 3) uint8 -> a PNG of exactly W x H pixels."""
    import matplotlib.image

    _replace_atomically(path, lambda tmp: matplotlib.image.imsave(tmp, image, format="png"))
