"""Training: the methods (CORD, its baselines and ablations) and the loop they share.

    methods.py   the method registry: which loss terms each method uses, as data (light:
                 the Snakefile imports it to build params; no torch here)
    losses.py    each loss term as a short function with its formula
    step.py      one training step of a method: inputs -> terms -> weighted sum
    loop.py      the optimisation loop shared by the base, warmup and train stages
    run.py       rules ``warmup`` and ``train``: one method spec from a checkpoint to a model
    rollout.py   rollout engines (who samples on-policy completions)
    judges.py    the sequence-level reward's judges

Nothing is imported here, so importing :mod:`cordflow.train.methods` stays light.
"""
