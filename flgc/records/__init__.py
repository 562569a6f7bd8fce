"""Record-keeping: what has been trained and what it scored.

- release / releases: the manifest of released checkpoints, releasing a run, verified downloads;
- results: the paper's results table (published, released and local rows) and its figure;
- reference: checkpoints of the public reference implementation, imported into ours.
"""
