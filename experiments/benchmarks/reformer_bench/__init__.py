"""Benchmark harness: one causal-LM training step (forward + backward, batch 1, bf16 autocast)
of reformer-lab and its peers, each (implementation, config, length) in a fresh process.

Modules: `settings` (configs, lengths, implementation names), `plain_transformer` (the `full`
baselines), `impls` (how each implementation is built and stepped), `availability` (which
peers are installed), `measure` (one run in this process), `watchdog` (a run's deadline),
`matrix` (many runs, one subprocess each), `records` (the JSON-lines file), `render`
(markdown table and plots). `run.py` and `render.py` beside this package are the commands.
"""
