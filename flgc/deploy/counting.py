"""MAC counts of the deployed modules, as flgc.method.flops counts other modules (ptflops's convention: bias
adds included). flgc.deploy registers these hooks with flgc.method.flops.register_flop_hook on import."""


def block_pointwise_hook(module, inputs, output):
    """A BlockPointwise: one product per block of (input range, output range)."""
    spatial = output.shape[0] * output.shape[2] * output.shape[3]
    module.__flops__ += spatial * sum((i1 - i0) * (o1 - o0) for i0, i1, o0, o1 in module.blocks)
    module.__flops__ += output.numel() if module.blocks else 0  # bias adds, as ptflops counts them


def grouped_conv_hook(module, inputs, output):
    """A GroupedConv: its padded grouped conv (the inner conv counts itself where it runs)."""
    # the matmul path (taken for contiguous NCHW inputs; a gather keeps the layout) and the native
    # kernel bypass the inner conv, whose own hook then never fires: count what that conv would have
    if (module.matmul and inputs[0].is_contiguous()) or module.runs_native(inputs[0]):
        conv = module.conv
        positions = output.shape[0] * output.shape[2] * output.shape[3]
        module.__flops__ += positions * conv.out_channels * (conv.in_channels // conv.groups + 1)
