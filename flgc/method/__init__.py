"""The paper's method: what Fully Learnable Group Convolution is, apart from any network or training run.

- layer: FLGConv2d, its hard group assignment and straight-through gradient;
- planner: a learned structure planned as contiguous channel groups (the layer's grouped forward, deployment);
- regularizer: the per-layer penalties on group sizes, structure statistics;
- budget: the whole-model MMac target (penalty and projection);
- convert: convert_model, FLGC in any network;
- flops: MMac counting of the learned structure (ptflops convention).

These modules import only each other, flgc.errors, torch and ptflops.
"""
