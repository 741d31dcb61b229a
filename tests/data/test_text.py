"""TextFileDataModule: which bytes it reads, split fractions, and its errors."""

from __future__ import annotations

import pytest
import torch

from reformer_lab.data import DataError, TextFileDataModule
from reformer_lab.data.base import IGNORE_INDEX


def ready(path, **kwargs) -> TextFileDataModule:
    dm = TextFileDataModule(**{"path": str(path), "seq_len": 4, "batch_size": 2, **kwargs})
    dm.prepare_data()
    dm.setup()
    return dm


def counted_targets(dataset) -> bytes:
    targets = torch.cat([dataset[i]["targets"] for i in range(len(dataset))])
    return bytes(targets[targets != IGNORE_INDEX].tolist())


def test_folder_files_are_joined_in_sorted_order_skipping_hidden(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b.txt").write_bytes(b"B" * 100)
    (tmp_path / "a.txt").write_bytes(b"A" * 100)
    (tmp_path / "sub" / "c.txt").write_bytes(b"C" * 200)
    (tmp_path / ".hidden").write_bytes(b"H" * 50)
    (tmp_path / ".git" / "config").write_bytes(b"G" * 50)
    dm = ready(tmp_path, split=(0.5, 0.25, 0.25))
    assert bytes(dm.train_set.data.tolist()) == b"A" * 100 + b"B" * 100  # [0, 200)
    assert counted_targets(dm.val_set) == b"C" * 100  # [200, 300)
    assert counted_targets(dm.test_set) == b"C" * 100  # [300, 400)


def test_single_file_default_split_is_90_5_5(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(200)) * 5)  # 1,000 bytes
    dm = ready(path)
    assert dm.train_set.data.numel() == 900
    assert counted_targets(dm.val_set) == path.read_bytes()[900:950]
    assert counted_targets(dm.test_set) == path.read_bytes()[950:]


@pytest.mark.parametrize(
    "split", [(0.9, 0.05), (0.9, 0.05, 0.1), (1.0, 0.0, 0.0), (0.9, -0.05, 0.15), "0.9,0.05,0.05"]
)
def test_bad_split_fractions_are_rejected(tmp_path, split):
    with pytest.raises(DataError, match=r"data\.split"):
        TextFileDataModule(path=str(tmp_path), split=split)


def test_missing_or_empty_path_and_too_short_text_are_rejected(tmp_path):
    with pytest.raises(DataError, match=r"data\.path"):
        TextFileDataModule(path=str(tmp_path / "absent")).prepare_data()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        TextFileDataModule(path=str(tmp_path / "empty")).prepare_data()
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 100)  # train split 90 bytes
    with pytest.raises(DataError, match=r"fewer than seq_len \+ 1 = 91.*data\.seq_len"):
        ready(short, seq_len=90)
    ready(short, seq_len=89)  # exactly seq_len + 1 train bytes is enough


def test_worker_processes_give_the_same_batches_as_the_main_process(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 4)
    batches = []
    for workers in (0, 2):
        dm = ready(path, seq_len=8, batch_size=8, num_workers=workers)
        batches.append(torch.cat([b["inputs"] for b in dm.train_dataloader()]))
    assert torch.equal(batches[0], batches[1])


def test_hydra_instantiates_it_from_yaml_style_config(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(200)) * 2)
    cfg = OmegaConf.create(
        {
            "_target_": "reformer_lab.data.TextFileDataModule",
            "path": str(path),
            "split": [0.5, 0.25, 0.25],
            "seq_len": 4,
            "batch_size": 2,
        }
    )
    dm = instantiate(cfg)
    dm.setup()
    assert dm.split == (0.5, 0.25, 0.25) and dm.train_set.data.numel() == 200
