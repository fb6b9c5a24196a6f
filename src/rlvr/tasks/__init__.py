"""Tasks: a dataset of problems, a prompt template, and the rewards that score it."""
