"""The stages of a pipeline around RL, one module per stage: each is a short, readable loop over the
shared components (model loading, checkpoints, batches, the rollout engine, evaluation) with a typed
config of its own, and a stage never imports another stage: a pipeline passes one stage's output (a
model directory, a dataset file) to the next by name.
"""
