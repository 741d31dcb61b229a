"""Fig. 5 (right) of the Reformer paper: seconds per training step against sequence length,
batch x length held constant, for full attention and LSH attention with 1, 2, 4, 8 rounds.

Built on the benchmark harness in experiments/benchmarks (`reformer_bench`): its model sizes,
records file, timed steps, subprocess runner,
watchdog and table helpers. Modules: `cells` (which cells, which model),
`step` (one cell measured in this process), `sweep` (every cell, one subprocess each),
`table` (markdown table and plot). `run.py` and `render.py` beside this package are the commands.
"""
