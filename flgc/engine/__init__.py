"""The run engine: everything that trains and evaluates a network from a config.

- config: the typed schema of every key; cli: what the entry points share (one-line errors, exit codes);
- data: CIFAR-10 in memory with batched augmentation;
- step: device, precision, the objective under train.compile, a stretch of steps;
- training: a run, epoch by epoch (resume, signals, checkpoints, logs); evaluation: top-1 on a test split;
- optim: the optimizer and the lr schedule; checkpoint: the checkpoint format, load_model;
- runlog: metrics.jsonl, TensorBoard, the summary line; plots: figures of learned group structures;
- distributed: torchrun plumbing; provenance: the hardware and the commit behind a result.
"""
