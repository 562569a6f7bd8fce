"""Record-keeping: what has been trained and what it scored.

- releases: the manifest of released checkpoints, releasing a finished run, verified downloads;
- results: the paper's results table (published, released and local rows) and its figure;
- reference_checkpoints: checkpoints of the public reference implementation, imported into ours.
"""
