"""The training loop on Accelerate: optimisation, evaluation, checkpoints, several processes, stages."""
