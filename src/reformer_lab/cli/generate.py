"""`reformer-generate`: a checkpoint and a prompt in, samples out (conf/generate.yaml).

    reformer-generate ckpt_path=<run>/checkpoints/last.ckpt 'prompt="Once upon a time"'
    reformer-generate ckpt_path=... prompt_file=start.txt max_new_tokens=1024 temperature=0.8 \
        top_p=0.9 num_samples=4 out=samples.txt
    reformer-generate ckpt_path=<cifar10 run>/checkpoints/last.ckpt image_prefix_rows=16 \
        num_samples=8 out=grid.png

Text models are byte-level: the prompt's UTF-8 bytes are the tokens, and each sample (prompt
and continuation) is printed decoded as UTF-8 (invalid bytes as U+FFFD) and, with out=path,
written there too. Image models (data cifar10 / imagenet64 in the stored run config) complete
the first `num_samples` test images from their first `image_prefix_rows` pixel rows; the
PNG grid shows, per image, the prefix, the sample and the original. Decoding is the cached
`ReformerLM.generate` (model/generation.py).

Order of work: check the request, read the checkpoint's stored config (no model built) and
check the prompt against it, read the test images (image models), then build the model and
generate. Every bad input is reported before the model is built.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "pkg://reformer_lab.conf"
DTYPES = ("float32", "bfloat16")


@dataclass
class Request:
    """What to generate, checked against the stored model config; nothing built yet."""

    checkpoint: Path
    model_config: Any  # ReformerConfig
    prompts: Any  # (num_samples, N) int64 tensor
    max_new_tokens: int
    out: Path | None
    image: dict[str, int] | None = None  # {"height", "width", "rows"} for image models
    originals: Any = None  # (num_samples, H*W*3) sub-pixels of the test images


def generate_samples(cfg: DictConfig) -> dict[str, Any]:
    import torch

    from reformer_lab.lit import ReformerLitModule
    from reformer_lab.lit.callbacks.samples import complete_images

    request = check_request(cfg)
    device, dtype = pick_device(cfg.device), getattr(torch, cfg.dtype)
    # weights_only=False: the stored data hyperparameters may hold omegaconf containers
    # (e.g. text_file's `split`), which torch's weights-only unpickler refuses.
    module = ReformerLitModule.load_from_checkpoint(
        request.checkpoint, map_location="cpu", weights_only=False
    )
    model = module.model.to(device=device, dtype=dtype).eval()
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    sampling = dict(
        temperature=float(cfg.temperature),
        top_k=cfg.top_k,
        top_p=None if cfg.top_p is None else float(cfg.top_p),
        use_cache=cfg.use_cache,
        generator=generator,
    )
    prompts = request.prompts.to(device)  # (num_samples, N)
    started = time.time()
    if request.image is None:
        out = model.generate(prompts, request.max_new_tokens, **sampling)  # (S, N + new)
    else:
        out = complete_images(model, prompts, **sampling)  # (S, H*W*3)
    out = out.cpu()  # waits for the device
    seconds = time.time() - started

    if request.image is None:
        written = emit_text(out, model.cfg.vocab_size, request.out)
    else:
        written = emit_images(out, request)
    n_new = request.max_new_tokens * len(prompts)
    print(
        f"reformer-generate: {len(prompts)} x {request.max_new_tokens} new tokens in "
        f"{seconds:.2f} s ({n_new / max(seconds, 1e-9):.0f} tokens/s, "
        f"{'cached' if cfg.use_cache else 'uncached'}, {device}, {cfg.dtype})",
        file=sys.stderr,
        flush=True,
    )
    return {
        "metrics": {"seconds": round(seconds, 3), "tokens_per_second": n_new / max(seconds, 1e-9)},
        "objective": None,
        "checkpoint": str(request.checkpoint.resolve()),
        "out": str(written) if written else None,
        "new_tokens_per_sample": request.max_new_tokens,
        "num_samples": len(prompts),
    }


# --- checks (nothing built) -------------------------------------------------------------
def check_request(cfg: DictConfig) -> Request:
    """Every check that can fail, in the order a user would fix them; raises InvalidRunConfig."""
    from reformer_lab.cli.validate import InvalidRunConfig

    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise InvalidRunConfig(
            f"ckpt_path={cfg.ckpt_path} is not a file: give a .ckpt written "
            f"by reformer-train (<run folder>/checkpoints/last.ckpt or best-*.ckpt)"
        )
    check_sampling(cfg)
    given = [k for k in ("prompt", "prompt_file", "image_prefix_rows") if cfg.get(k) is not None]
    if not given:
        raise InvalidRunConfig(
            "no prompt: give prompt='\"text\"', prompt_file=path or, for an image model, "
            "image_prefix_rows=N"
        )
    if len(given) > 1:
        raise InvalidRunConfig(
            f"{' and '.join(given)} are both set: give exactly one of prompt, prompt_file "
            f"(text models) or image_prefix_rows (image models)"
        )
    model_config, data_cfg, is_image = stored_config(checkpoint, cfg.data)
    if not model_config.causal:
        raise InvalidRunConfig(
            f"{checkpoint} holds a non-causal model (model.causal=false): it attends to later "
            f"positions, so it cannot generate left to right; train with model.causal=true"
        )
    if cfg.top_k is not None and cfg.top_k > model_config.vocab_size:
        raise InvalidRunConfig(
            f"top_k={cfg.top_k} exceeds the model's vocab_size={model_config.vocab_size}"
        )
    out = check_out(cfg, is_image)
    if is_image:
        return image_request(cfg, checkpoint, model_config, data_cfg, out)
    if "image_prefix_rows" in given:
        raise InvalidRunConfig(
            f"image_prefix_rows is for image models, but {checkpoint} was trained on "
            f"{data_name(data_cfg)}: give prompt='\"text\"' or prompt_file=path"
        )
    return text_request(cfg, checkpoint, model_config, out)


def check_sampling(cfg: DictConfig) -> None:
    from reformer_lab.cli.validate import InvalidRunConfig

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if not is_int(cfg.max_new_tokens) or cfg.max_new_tokens < 1:
        problems.append(f"max_new_tokens={cfg.max_new_tokens!r} must be a positive integer")
    temperature = cfg.temperature
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        problems.append(f"temperature={temperature!r} must be a number >= 0 (0 = greedy)")
    if cfg.top_k is not None and (not is_int(cfg.top_k) or cfg.top_k < 1):
        problems.append(f"top_k={cfg.top_k!r} must be a positive integer or null")
    top_p = cfg.top_p
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
    ):
        problems.append(f"top_p={top_p!r} must be a number in (0, 1] or null")
    if not is_int(cfg.seed):
        problems.append(f"seed={cfg.seed!r} must be an integer")
    if not is_int(cfg.num_samples) or cfg.num_samples < 1:
        problems.append(f"num_samples={cfg.num_samples!r} must be a positive integer")
    for key in ("use_cache", "overwrite"):
        if not isinstance(cfg[key], bool):
            problems.append(f"{key}={cfg[key]!r} must be true or false")
    if cfg.dtype not in DTYPES:
        problems.append(f"dtype={cfg.dtype!r} must be one of {list(DTYPES)}")
    if problems:
        raise InvalidRunConfig("; ".join(problems))
    pick_device(cfg.device)


def pick_device(name: str) -> Any:
    import torch

    from reformer_lab.cli.validate import InvalidRunConfig

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise InvalidRunConfig(f"device={name!r} is not a torch device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRunConfig(f"device={name} but no CUDA GPU is visible: use device=cpu")
    return device


def stored_config(checkpoint: Path, data_overrides: DictConfig) -> tuple[Any, Any, bool]:
    """(ReformerConfig, data config or None, is an image model) from the checkpoint's
    hyperparameters, read without building the model (tensors memory-mapped, not loaded)."""
    import torch
    from hydra.utils import get_class

    from reformer_lab.cli.validate import InvalidRunConfig
    from reformer_lab.data.images import ImageDataModule
    from reformer_lab.model import ConfigError, ReformerConfig

    try:
        stored = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # not a zip/pickle, truncated, ...: many error types
        raise InvalidRunConfig(
            f"ckpt_path={checkpoint} could not be read as a checkpoint ({error}): give a .ckpt "
            f"written by reformer-train"
        ) from error
    hparams = stored.get("hyper_parameters") if isinstance(stored, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams:
        raise InvalidRunConfig(
            f"{checkpoint} holds no model hyperparameters: not written by reformer-train"
        )
    try:
        model_config = ReformerConfig(**hparams["model"])
    except (ConfigError, TypeError) as error:
        raise InvalidRunConfig(f"{checkpoint}: stored model config: {error}") from error
    run_config = hparams.get("run_config") or {}
    if "data" not in run_config:
        return model_config, None, False
    data_cfg = OmegaConf.merge(OmegaConf.create(run_config["data"]), data_overrides)
    try:
        data_class = get_class(data_cfg._target_)
    except Exception as error:
        raise InvalidRunConfig(f"data._target_={data_cfg._target_}: {error}") from error
    return model_config, data_cfg, issubclass(data_class, ImageDataModule)


def data_name(data_cfg: Any) -> str:
    return "unknown data" if data_cfg is None else data_cfg._target_.rsplit(".", 1)[-1]


def check_out(cfg: DictConfig, is_image: bool) -> Path | None:
    from reformer_lab.cli.validate import InvalidRunConfig

    if cfg.out is None:
        return Path(cfg.paths.output_dir) / "samples.png" if is_image else None
    out = Path(cfg.out)
    if is_image and out.suffix.lower() != ".png":
        raise InvalidRunConfig(f"out={cfg.out}: an image model writes a PNG grid: end it in .png")
    if out.is_dir():
        raise InvalidRunConfig(f"out={cfg.out} is a folder: give a file path")
    if out.exists() and not cfg.overwrite:
        raise InvalidRunConfig(
            f"out={cfg.out} exists: choose another path or set overwrite=true to replace it"
        )
    return out


def text_request(cfg: DictConfig, checkpoint: Path, model_config: Any, out: Path | None) -> Request:
    import torch

    from reformer_lab.cli.validate import InvalidRunConfig

    if cfg.prompt is not None:
        source, data = "prompt", str(cfg.prompt).encode("utf-8")
    else:
        path = Path(cfg.prompt_file)
        if not path.is_file():
            raise InvalidRunConfig(f"prompt_file={cfg.prompt_file} is not a file")
        source, data = f"prompt_file={path}", path.read_bytes()
    if not data:
        raise InvalidRunConfig(f"{source} is empty: give at least one character")
    room = model_config.max_seq_len - cfg.max_new_tokens
    if room < 1:
        raise InvalidRunConfig(
            f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt: the model takes "
            f"max_seq_len={model_config.max_seq_len} positions; lower max_new_tokens"
        )
    if len(data) > room:
        raise InvalidRunConfig(
            f"{source} is {len(data)} bytes but the model takes max_seq_len="
            f"{model_config.max_seq_len} positions, so with max_new_tokens={cfg.max_new_tokens} "
            f"the prompt may have at most {room}: shorten it or lower max_new_tokens"
        )
    if max(data) >= model_config.vocab_size:
        raise InvalidRunConfig(
            f"{source} holds byte {max(data)} but the model's vocab_size is "
            f"{model_config.vocab_size}: it was not trained on byte-level text"
        )
    tokens = torch.tensor(list(data), dtype=torch.int64)  # (N,)
    prompts = tokens[None].repeat(cfg.num_samples, 1)  # (num_samples, N)
    return Request(checkpoint, model_config, prompts, cfg.max_new_tokens, out)


def image_request(
    cfg: DictConfig, checkpoint: Path, model_config: Any, data_cfg: Any, out: Path
) -> Request:
    """The first num_samples test images, cut to their first image_prefix_rows pixel rows."""
    import torch

    from reformer_lab.cli.validate import InvalidRunConfig, build_or_explain
    from reformer_lab.lit.callbacks.samples import image_prompt

    name = data_name(data_cfg)
    rows = cfg.image_prefix_rows
    if rows is None:
        raise InvalidRunConfig(
            f"{checkpoint} is an image model ({name}): give image_prefix_rows=N (the first N "
            f"pixel rows of each test image are the prompt), not a text prompt"
        )
    datamodule = build_or_explain(data_cfg, "data")
    height, width = datamodule.height, datamodule.width
    if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows < height:
        raise InvalidRunConfig(
            f"image_prefix_rows={rows!r} must be an integer in 0..{height - 1} "
            f"({name} images have {height} rows)"
        )
    if model_config.max_seq_len != datamodule.seq_len:
        raise InvalidRunConfig(
            f"the model takes {model_config.max_seq_len} positions but a {name} image has "
            f"{datamodule.seq_len} sub-pixels: the data overrides do not match the checkpoint"
        )
    datamodule.prepare_data()
    datamodule.setup("test")
    test_set = datamodule.test_set
    if cfg.num_samples > len(test_set):
        raise InvalidRunConfig(
            f"num_samples={cfg.num_samples} but the test split has {len(test_set)} images"
        )
    examples = [test_set[i] for i in range(cfg.num_samples)]
    prompts = torch.stack([image_prompt(e["inputs"], rows, width) for e in examples])  # (S, 1+P)
    originals = torch.stack([e["targets"] for e in examples])  # (S, H*W*3)
    n_new = datamodule.seq_len - rows * width * 3
    image = {"height": height, "width": width, "rows": rows}
    return Request(checkpoint, model_config, prompts, n_new, out, image, originals)


# --- output ------------------------------------------------------------------------------
def emit_text(out: Any, vocab_size: int, path: Path | None) -> Path | None:
    """Print every sample (prompt + continuation); also write them to `path` if given."""
    from reformer_lab.lit.callbacks.samples import render_tokens, write_text_atomically

    texts = [render_tokens(row, vocab_size) for row in out]
    if len(texts) == 1:
        shown = texts[0] + "\n"
    else:
        shown = "".join(f"--- sample {i} ---\n{text}\n" for i, text in enumerate(texts))
    sys.stdout.write(shown)
    sys.stdout.flush()
    if path is not None:
        write_text_atomically(path, shown)
    return path


def emit_images(out: Any, request: Request) -> Path:
    """A PNG grid, one row per image: prefix | sample | original."""
    from reformer_lab.lit.callbacks.samples import (
        image_grid,
        prefix_image,
        raster_to_image,
        write_png_atomically,
    )

    assert request.image is not None and request.out is not None
    height, width, rows = (request.image[k] for k in ("height", "width", "rows"))
    grid_rows = []
    for sample, original in zip(out, request.originals):
        original_image = raster_to_image(original, height, width)
        grid_rows.append(
            [
                prefix_image(original_image, rows),
                raster_to_image(sample, height, width),
                original_image,
            ]
        )
    write_png_atomically(request.out, image_grid(grid_rows))
    print(
        f"{request.out}: {len(grid_rows)} test images completed from {rows} pixel rows "
        f"(columns: prefix | sample | original)",
        flush=True,
    )
    return request.out


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="generate")
def main(cfg: DictConfig) -> float | None:
    from reformer_lab.cli.run import run_recorded

    return run_recorded(cfg, generate_samples, program="reformer-generate")


if __name__ == "__main__":
    main()
