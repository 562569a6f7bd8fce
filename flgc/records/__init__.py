"""Record-keeping: what has been trained and what it scored.

- manifest: the manifest of released checkpoints (its entries, read, checked and written);
- releases: releasing a finished run (its file and entry), filling in what older entries lack;
- downloads: fetching a released file, verified by sha256, resumable;
- pretrained: a released name as a model or a verified file (for eval.py, torch.hub and users);
- results: the paper's results table (published, released and local rows) and its figure;
- reference_checkpoints: checkpoints of the public reference implementation, imported into ours.
"""
