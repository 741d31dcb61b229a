"""Hydra configs of reformer-lab, shipped inside the package as `reformer_lab.conf`.

The folder lives at the repository root (conf/) and is linked into the package
(src/reformer_lab/conf -> ../../conf), so an installed wheel carries it and the entry points
find it with `config_path="pkg://reformer_lab.conf"`, with or without `pip install -e`.
"""
