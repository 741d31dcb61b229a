"""reformer-lab: the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) and the experiment framework
around it.

Layers, each importing only the ones below it:
    cli/    Hydra entry points (`reformer-train`, `reformer-eval`), W&B setup
    lit/    LightningModule, metrics, callbacks
    data/   LightningDataModules (duplication task, enwik8, text files, CIFAR-10, ImageNet 64x64)
    model/  torch only: LSH attention, reversible layers, chunked feed-forward, axial positions

Importing the package itself is cheap (no torch), so `reformer-train --help` starts fast.
"""

__version__ = "0.1.0"
