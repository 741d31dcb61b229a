"""reformer-eval's `attention=` override (Table 2 crosses training and evaluation attention):
an LSH checkpoint evaluated with full attention is exactly a full-attention ReformerLM with the
same weights, and vice versa; only the LSH `hash_step` buffer may differ, any other missing or
unexpected entry is still an error; bad values are refused before anything is loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from reformer_lab.cli.evaluate import evaluate, load_for_evaluation
from reformer_lab.cli.train import train
from reformer_lab.cli.validate import InvalidRunConfig
from reformer_lab.model import ReformerConfig, ReformerLM
from tests.conftest import TINY, compose_train

pytestmark = pytest.mark.usefixtures("reset_hydra")
FAST = [  # TINY without its model.n_hashes: a value override would beat `attention=lsh2`
    *(o for o in TINY if not o.startswith("model.n_hashes=")),
    "callbacks.sample_logger=null",
    "test_after_fit=false",
]


def trained_checkpoint(root: Path, overrides: list[str]) -> Path:
    from hydra.core.global_hydra import GlobalHydra

    result = train(compose_train([*FAST, *overrides], output_dir=root))
    GlobalHydra.instance().clear()
    return Path(result["checkpoints"]["best"] or result["checkpoints"]["last"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny LSH-2 model and a tiny full-attention model, 4 training steps each."""
    root = tmp_path_factory.mktemp("eval_attention")
    return {
        "lsh": trained_checkpoint(root / "lsh", ["attention=lsh2"]),
        "full": trained_checkpoint(root / "full", ["attention=full"]),
    }


def eval_config(checkpoint: Path, output_dir: Path, **settings):
    from hydra import compose, initialize_config_module

    overrides = [
        "~local",
        f"ckpt_path={checkpoint}",
        "splits=[test]",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        f"paths.output_dir={output_dir}",
        *(f"{key}={'null' if value is None else value}" for key, value in settings.items()),
    ]
    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        return compose("eval", overrides=overrides)


def reference_model(checkpoint: Path, attention: str) -> tuple[ReformerLM, dict]:
    """A ReformerLM built with `attention` from the stored config, the stored weights loaded
    strictly (the hash_step buffer dropped or left at its initial value as the kind needs)."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = stored["hyper_parameters"]
    model = ReformerLM(ReformerConfig(**{**hparams["model"], "attention": attention}))
    weights = {k.removeprefix("model."): v for k, v in stored["state_dict"].items()}
    expected = model.state_dict()
    weights = {k: v for k, v in weights.items() if k in expected or not k.endswith("hash_step")}
    for key in expected.keys() - weights.keys():
        assert key.endswith("core.hash_step"), key
        weights[key] = expected[key]
    model.load_state_dict(weights, strict=True)
    return model.eval(), hparams


def brute_force_test_accuracy(model: ReformerLM, hparams: dict, n_hashes: int | None) -> float:
    """Correct predictions / counted targets over the whole test split, one sequence at a time."""
    datamodule = instantiate(hparams["run_config"]["data"])
    datamodule.setup("test")
    correct = total = 0
    with torch.no_grad():
        for i in range(len(datamodule.test_set)):
            example = datamodule.test_set[i]
            logits = model(example["inputs"][None], n_hashes=n_hashes)[0]  # (L, vocab)
            counted = example["targets"] != -100  # (L,)
            predicted = logits.argmax(-1)  # (L,)
            correct += int((predicted[counted] == example["targets"][counted]).sum())
            total += int(counted.sum())
    return correct / total


def test_eval_config_has_attention_null_by_default() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        as_trained = compose("eval", overrides=["~local", "ckpt_path=x.ckpt"])
        lsh8 = compose("eval", overrides=["~local", "ckpt_path=x.ckpt", "attention=lsh8"])
        full = compose("eval", overrides=["~local", "ckpt_path=x.ckpt", "attention=full"])
    assert as_trained.get("model") is None
    assert dict(lsh8.model) == {"attention": "lsh", "n_hashes": 8}
    assert dict(full.model) == {"attention": "full"}


def test_an_lsh_checkpoint_evaluated_with_full_attention_is_a_full_model_with_its_weights(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = checkpoints["lsh"]
    reference, hparams = reference_model(checkpoint, "full")
    assert hparams["model"]["attention"] == "lsh" and hparams["model"]["n_hashes"] == 2

    swapped = load_for_evaluation(checkpoint, "full", None).model.eval()
    as_trained = load_for_evaluation(checkpoint, None, None).model.eval()
    tokens = torch.randint(1, 8, (3, 64), generator=torch.Generator().manual_seed(0))  # (B, L)
    with torch.no_grad():
        assert torch.equal(swapped(tokens), reference(tokens))  # (B, L, vocab)
        assert not torch.allclose(as_trained(tokens), reference(tokens))  # the kind did change

    result = evaluate(eval_config(checkpoint, tmp_path / "eval", attention="full"))
    assert result["attention"] == "full"
    expected = brute_force_test_accuracy(reference, hparams, n_hashes=None)
    assert result["metrics"]["test/accuracy"] == pytest.approx(expected, abs=1e-6)
    stored = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert stored["attention"] == "full"
    assert stored["results"]["test"]["test/accuracy"] == result["metrics"]["test/accuracy"]


def test_a_full_attention_checkpoint_evaluates_with_lsh8(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = checkpoints["full"]
    reference, hparams = reference_model(checkpoint, "lsh")
    assert hparams["model"]["attention"] == "full"
    swapped = load_for_evaluation(checkpoint, "lsh", 8).model.eval()
    tokens = torch.randint(1, 8, (2, 64), generator=torch.Generator().manual_seed(1))  # (B, L)
    with torch.no_grad():
        assert torch.equal(swapped(tokens, n_hashes=8), reference(tokens, n_hashes=8))

    result = evaluate(eval_config(checkpoint, tmp_path / "eval", attention="lsh8"))
    assert result["attention"] == "lsh" and result["n_hashes"] == 8
    expected = brute_force_test_accuracy(reference, hparams, n_hashes=8)
    assert result["metrics"]["test/accuracy"] == pytest.approx(expected, abs=1e-6)


def test_other_missing_or_unexpected_entries_still_fail(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Only hash_step is tolerated: a stray or a missing weight fails the load, swapped or not."""
    stored = torch.load(checkpoints["lsh"], map_location="cpu", weights_only=False)
    stray = dict(stored, state_dict={**stored["state_dict"], "model.stray.weight": torch.ones(2)})
    torch.save(stray, tmp_path / "stray.ckpt")
    weights = dict(stored["state_dict"])
    dropped = next(k for k in weights if k.endswith("to_v.weight"))
    del weights[dropped]
    torch.save(dict(stored, state_dict=weights), tmp_path / "short.ckpt")
    for attention in ("full", None):
        with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*"model\.stray\.weight"'):
            load_for_evaluation(tmp_path / "stray.ckpt", attention, None)
        with pytest.raises(RuntimeError, match=rf'Missing key\(s\).*"{re.escape(dropped)}"'):
            load_for_evaluation(tmp_path / "short.ckpt", attention, None)


def test_bad_attention_requests_are_refused_before_any_work(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="attention/flash"):  # lists the options
        eval_config(checkpoints["lsh"], tmp_path / "eval", attention="flash")
    contradiction = eval_config(checkpoints["lsh"], tmp_path / "eval", attention="lsh8", n_hashes=4)
    with pytest.raises(InvalidRunConfig, match="n_hashes=4 contradicts attention=lsh8"):
        evaluate(contradiction)
    other_key = eval_config(checkpoints["lsh"], tmp_path / "eval", **{"+model.dim": 64})
    with pytest.raises(InvalidRunConfig, match=r"only attention=<option>.* not model\.dim"):
        evaluate(other_key)
    assert not (tmp_path / "eval").exists()  # refused before any work

    # LSH hashes the shared query/key: a checkpoint with separate Q and K cannot use it
    separate = trained_checkpoint(
        tmp_path / "separate", ["attention=full", "model.shared_qk=false"]
    )
    with pytest.raises(InvalidRunConfig, match=r"attention=lsh does not fit .*shared_qk=True"):
        evaluate(eval_config(separate, tmp_path / "eval", attention="lsh2"))
