"""Benchmark harness: one causal-LM training step (forward + backward, batch 1, bf16 autocast)
of reformer-lab and its peers, each (implementation, config, length) in a fresh process.

Modules: `settings` (configs, lengths, implementation names), `plain_transformer` (the `full`
baselines), `impls` (how each implementation is built and stepped), `availability` (which
peers are installed), `timing` (warm-up, timed steps, failures as statuses), `measure` (one
run in this process), `watchdog` (a run's deadline), `child` (one run in a subprocess, both
sides), `matrix` (many runs, one subprocess each), `records` (the JSON-lines file), `render`
(markdown table and plots), `commands` (what the command lines share). `run.py` and
`render.py` beside this package are the commands; experiments/speed_vs_length builds on them.
"""
