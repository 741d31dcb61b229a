"""Command-line entry points: the only layer that knows Hydra and sets up W&B.

reformer-train (train.py) and reformer-eval (evaluate.py) compose conf/ (shipped inside the
package as reformer_lab.conf), validate (validate.py), build (build.py) and record how each
run ended (run.py, outcome.py).
"""
