"""Command-line entry points: the only layer that knows Hydra and sets up W&B.

reformer-train (train.py), reformer-eval (evaluate.py) and reformer-generate (generate.py)
compose conf/ (shipped inside the package as reformer_lab.conf), validate (validate.py), build
(build.py) and record how each run ended (run.py, outcome.py); reformer-report (report.py)
turns a run or sweep folder into a table and plots.
"""
