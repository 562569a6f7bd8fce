"""The compiled CPU kernels (flgc.deploy.native) against plain torch, and the deployed modules that use them
against their torch fallback. Tests that need the kernels skip, saying why, where no C++ compiler or
ninja is found or FLGC_NATIVE=0 is set; the fallback tests run everywhere."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from helpers import TOLERANCE, kernels_missing, randomise
from yardsticks import assign_balanced

import flgc
from flgc import deploy
from flgc.deploy import GroupedConv, PermutedAdd, PermutedSum, export, native
from flgc.method import flops

MISSING = kernels_missing()
needs_kernels = pytest.mark.skipif(bool(MISSING), reason=MISSING)

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
ROOT = Path(__file__).resolve().parents[1]


@needs_kernels
def test_the_kernels_build_here():
    assert native.available(), native.unavailable_reason()


@pytest.mark.slow  # a whole process (about 4 s)
def test_without_a_compiler_one_warning_line_and_the_torch_ops(tmp_path):
    script = ("import torch; from flgc.deploy import native; from flgc.deploy.modules import channel_gather; "
              "x = torch.randn(1, 4, 2, 2); print(native.available(), torch.equal(channel_gather(x, torch.tensor([3, 0])), "
              "x[:, [3, 0]]))")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "cache"),
           "FLGC_NATIVE": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["False", "True"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: flgc's compiled CPU kernels are not available (")
    assert "no C++ compiler" in lines[0] or "ninja" in lines[0]


def tensors(layout, *channels, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(2, c, 5, 3).contiguous(memory_format=FORMATS[layout]) for c in channels]


@needs_kernels
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("relu", [False, True])
def test_permuted_add_matches_index_add_including_repeated_entries(layout, relu):
    base, other = tensors(layout, 9, 7)
    index = torch.tensor([4, 0, 8, 2, 8, 1, 8])  # 8 named three times: summed in turn; 3, 5, 6, 7 untouched
    expected = base.clone().index_add_(1, index, other)
    expected = expected.relu() if relu else expected
    out = native.permuted_add_(base, other, index, relu)
    assert out is base and torch.allclose(out, expected, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("relu", [False, True])
def test_permuted_sum_gathers_both_operands_and_zeroes_padding(layout, relu):
    a, b = tensors(layout, 6, 8)
    left, right = torch.tensor([5, -1, 0, 3, 1, -1]), torch.tensor([7, -1, 2, 0, 4, -1])
    expected = a[:, left.clamp(min=0)] + b[:, right.clamp(min=0)]
    expected[:, left < 0] = 0
    expected = expected.relu() if relu else expected
    out = native.permuted_sum(a, b, left, right, relu)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=FORMATS[layout])


@needs_kernels
@pytest.mark.parametrize("layout", FORMATS)
def test_permuted_sum_may_write_over_its_first_operand(layout):
    a, b = tensors(layout, 6, 6, seed=2)
    left, right = torch.tensor([5, 2, 0, 3, 1, 4]), torch.tensor([1, 0, 4, 5, 3, 2])
    expected = (a[:, left] + b[:, right]).relu()
    out = native.permuted_sum(a, b, left, right, True, True)
    assert torch.equal(out, expected)
    # rows (channels_last) are made in place; whole planes (contiguous) cannot be, and a stays
    assert (out.data_ptr() == a.data_ptr()) == (layout == "channels_last")


@needs_kernels
@pytest.mark.parametrize("layout", FORMATS)
def test_gather_channels_keeps_the_layout(layout):
    (x,) = tensors(layout, 10)
    index = torch.tensor([9, 0, 0, 4, 7])
    out = native.gather_channels(x, index)
    assert torch.equal(out, x[:, index]) and out.is_contiguous(memory_format=FORMATS[layout])


@needs_kernels
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("stride", [2, 3])
def test_gather_channels_with_a_stride_reads_what_a_strided_1x1_conv_reads(layout, stride):
    (x,) = tensors(layout, 6)  # 5 x 3 pixels: odd sizes keep the last row and column
    index = torch.tensor([5, 1, 3])
    out = native.gather_channels(x, index, stride)
    assert torch.equal(out, x[:, index, ::stride, ::stride]) and out.is_contiguous(memory_format=FORMATS[layout])


def instruction_sets():
    """The row kernels' instruction sets this CPU runs (the best first)."""
    names = []
    if native.available():
        for name in ["avx2", "plain"]:
            try:
                native.row_isa(name)
                names.append(name)
            except RuntimeError:
                pass
        native.row_isa("best")
    return names


@pytest.fixture(params=["unused"] if MISSING else instruction_sets())  # the tests skip before using it
def isa(request):
    assert native.row_isa(request.param) == request.param
    yield request.param
    native.row_isa("best")


@needs_kernels
@pytest.mark.parametrize("relu", [False, True])
def test_every_instruction_set_sums_and_gathers_wide_rows_as_torch_does(isa, relu):
    # 37 channels: two full 16-wide vectors and a tail; repeated entries, padding and a NaN included
    a, b = tensors("channels_last", 37, 41, seed=3)
    a[0, 5, 1, 1] = float("nan")
    left, right = torch.randint(0, 37, (37,)), torch.randperm(41)[:37]
    left[0] = 5
    left[[2, 30]], right[[2, 30]] = -1, -1
    expected = a[:, left.clamp(min=0)] + b[:, right.clamp(min=0)]
    expected[:, left < 0] = 0
    expected = expected.relu() if relu else expected
    out = native.permuted_sum(a, b, left, right, relu)
    assert out[0, 0, 1, 1].isnan() and torch.equal(out.nan_to_num(7.0), expected.nan_to_num(7.0))
    first, order = b[:, 3:40].contiguous(memory_format=torch.channels_last), torch.randperm(37)
    expected = first[:, order] + a[:, order.flip(0)]
    out = native.permuted_sum(first.clone(), a, order, order.flip(0), relu, True)
    assert torch.equal(out.nan_to_num(7.0), (expected.relu() if relu else expected).nan_to_num(7.0))
    index = torch.randint(0, 41, (45,))
    for stride in [1, 2]:
        assert torch.equal(native.gather_channels(b, index, stride), b[:, index, ::stride, ::stride])


@needs_kernels
def test_an_instruction_set_the_cpu_lacks_is_refused():
    with pytest.raises(RuntimeError, match="not available"):
        native.row_isa("sse9")
    assert native.row_isa("") == instruction_sets()[0]


@needs_kernels
def test_bad_indices_are_refused_not_read_out_of_bounds():
    a, b = tensors("channels_last", 4, 4)
    with pytest.raises(RuntimeError, match="out of range"):
        native.gather_channels(a, torch.tensor([0, 4]))
    with pytest.raises(RuntimeError, match="same entries"):
        native.permuted_sum(a, b, torch.tensor([0, -1]), torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="memory layout"):
        native.permuted_add_(a, b.contiguous(), torch.arange(4), False)


@needs_kernels
def test_only_inference_tensors_are_eligible():
    (x,) = tensors("contiguous", 3)
    assert native.eligible(x, x)
    assert not native.eligible(x.double())
    assert not native.eligible(x, x.contiguous(memory_format=torch.channels_last))
    assert not native.eligible(x.requires_grad_())
    with torch.no_grad():
        assert native.eligible(x)


@pytest.mark.parametrize("layout", FORMATS)
def test_deployed_sums_give_the_same_with_and_without_the_kernels(layout, monkeypatch):
    a, b = tensors(layout, 8, 8, seed=1)
    add, total = PermutedAdd(8, inplace=False, relu=True), PermutedSum(8, relu=True, inplace=False, padded=True)
    add.index.copy_(torch.randperm(8))
    add.inverse.copy_(torch.argsort(add.index))
    total.left.copy_(torch.tensor([3, 1, -1, 0, 7, 2, 6, -1]))
    total.right.copy_(torch.tensor([0, 4, -1, 7, 1, 6, 2, -1]))
    expected_sum = a[:, total.left.clamp(min=0)] + b[:, total.right.clamp(min=0)]
    expected_sum[:, total.left < 0] = 0
    expected = [(a + b[:, add.inverse]).relu(), expected_sum.relu()]
    with torch.no_grad():
        compiled = [add(a, b), total(a, b)]  # the kernels where they are built, else the fallback
        monkeypatch.setattr(native, "eligible", lambda *tensors: False)
        fallback = [add(a, b), total(a, b)]
    for x, y, want in zip(compiled, fallback, expected):
        assert torch.allclose(x, want, atol=1e-6) and torch.allclose(y, want, atol=1e-6)


def test_a_deployed_resnet50_gives_the_same_with_and_without_the_kernels(monkeypatch):
    model = randomise(flgc.convert_model(torchvision.models.resnet50(weights=None), groups=8, logit_init_std=1.0,
                                         init="random"), 6).eval()
    deployed = deploy.deploy_model(model, strategy="conv", input_size=(3, 32, 32))  # strided downsample gathers too
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    deployed = deployed.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, compiled = model(x), deployed(x)
        monkeypatch.setattr(native, "eligible", lambda *tensors: False)
        fallback = deployed(x)
    assert float((compiled - expected).abs().max()) <= TOLERANCE
    assert float((fallback - expected).abs().max()) <= TOLERANCE


@needs_kernels
@pytest.mark.parametrize("n, c, out, size, groups", [(2, 64, 64, (5, 3), 8), (1, 48, 72, (7, 7), 3), (3, 16, 128, (2, 9), 2),
                                                     (2, 40, 20, (3, 3), 4), (4, 32, 16, (1, 1), 2)])
def test_grouped_pointwise_matches_torchs_grouped_conv(isa, n, c, out, size, groups):
    # 8, 24 and 64 filters per group (one or two 8-wide vectors and their mix), 5 (no vector), rows
    # not a multiple of 8, one pixel per image
    torch.manual_seed(4)
    x = torch.randn(n, c, *size).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(out, c // groups, 1, 1), torch.randn(out)
    y = native.grouped_pointwise(x, native.pointwise_weight(weight, groups), bias)
    assert torch.allclose(y, F.conv2d(x, weight, bias, groups=groups), atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


@needs_kernels
@pytest.mark.parametrize("n, c, out, size, groups", [(2, 64, 64, (5, 3), 8), (1, 48, 72, (7, 7), 3),
                                                     (2, 40, 20, (3, 3), 4)])
@pytest.mark.parametrize("relu", [False, True])
def test_grouped_pointwise_sum_is_the_conv_then_the_permuted_sum(isa, n, c, out, size, groups, relu):
    # rows not a multiple of 8, 5 filters per group (no vector: conv, then the sum), padding entries
    torch.manual_seed(5)
    x = torch.randn(n, c, *size).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(out, c // groups, 1, 1), torch.randn(out)
    b = torch.randn(n, out + 3, *size).contiguous(memory_format=torch.channels_last)
    left, right = torch.randperm(out), torch.randperm(out + 3)[:out]
    left[[1, 4]], right[[1, 4]] = -1, -1
    expected = F.conv2d(x, weight, bias, groups=groups)[:, left.clamp(min=0)] + b[:, right.clamp(min=0)]
    expected[:, left < 0] = 0
    expected = expected.relu() if relu else expected
    packed, kept = native.pointwise_weight(weight, groups), b.clone()
    y = native.grouped_pointwise_sum(x, packed, bias, b, left, right, relu, True)  # b has other channels: a new tensor
    assert torch.allclose(y, expected, atol=1e-5) and torch.equal(b, kept)
    assert y.is_contiguous(memory_format=torch.channels_last)
    b = b[:, :out].contiguous(memory_format=torch.channels_last)
    right = torch.randperm(out)
    right[[1, 4]] = -1
    expected = F.conv2d(x, weight, bias, groups=groups)[:, left.clamp(min=0)] + b[:, right.clamp(min=0)]
    expected[:, left < 0] = 0
    expected = expected.relu() if relu else expected
    kept = b.clone()
    assert torch.allclose(native.grouped_pointwise_sum(x, packed, bias, b, left, right, relu), expected, atol=1e-5)
    assert torch.equal(b, kept)
    y = native.grouped_pointwise_sum(x, packed, bias, b, left, right, relu, True)
    assert torch.allclose(y, expected, atol=1e-5)
    if out % 8 == 0 and isa != "plain":  # the fused kernel writes over b; the conv-then-sum fallback over the conv's output
        assert y.data_ptr() == b.data_ptr()


@needs_kernels
def test_a_grouped_conv_with_a_sum_epilogue_fuses_and_falls_back_alike():
    torch.manual_seed(6)
    module = GroupedConv(32, 32, 32, 32, 4, native=True)  # 8 filters per group
    epilogue = PermutedSum(32, relu=True, inplace=True)
    epilogue.left.copy_(torch.randperm(32))
    epilogue.right.copy_(torch.randperm(32))
    with pytest.raises(ValueError, match="sum epilogue"):
        GroupedConv(32, 32, 32, 32, 4).fuse(epilogue)  # not native: no fused kernel
    module.fuse(epilogue, overwrite=True)
    rebuilt = deploy.modules.from_spec(deploy.modules.spec_of(module))
    rebuilt.load_state_dict(module.state_dict())
    assert rebuilt.overwrite and rebuilt.epilogue.relu
    x, other = (torch.randn(2, c, 5, 3).contiguous(memory_format=torch.channels_last) for c in (32, 32))
    with torch.no_grad():
        expected = F.relu(module.conv(x)[:, epilogue.left] + other[:, epilogue.right])
        unfused = rebuilt(x.contiguous(), other.contiguous())  # NCHW: the conv, then the sum
        kept = other.clone()
        fused = rebuilt(x, other)
    assert torch.allclose(unfused, expected, atol=1e-5) and torch.allclose(fused, expected, atol=1e-5)
    assert fused.data_ptr() == other.data_ptr() and not torch.equal(other, kept)  # overwrite: the sum took its memory
    with pytest.raises(ValueError, match="second input"):
        rebuilt(x)


@needs_kernels
def test_the_native_kernel_strategy_deploys_resnet50_exactly_and_rebuilds(monkeypatch):
    model = randomise(flgc.convert_model(torchvision.models.resnet50(weights=None), groups=8, logit_init_std=1.0,
                                         init="random"), 7).eval()
    deployed = deploy.deploy_model(model, strategy="native", input_size=(3, 32, 32)).to(memory_format=torch.channels_last)
    native_convs = [m for m in deployed.modules() if isinstance(m, GroupedConv) and m.native]
    assert len(native_convs) == 33  # all 36 FLGC convs but the strided downsample convs (planned as convs)
    # every residual sum but the last (summed in conv3's order for the pooling) runs inside its conv3,
    # written over the block's input or the downsample conv's output, read by nothing after it
    fused = {name: m.overwrite for name, m in deployed.named_modules() if isinstance(m, GroupedConv) and m.epilogue}
    assert fused == {f"layer{stage}.{block}.conv3": True for stage, blocks in zip(range(1, 5), (3, 4, 6, 3))
                     for block in range(blocks) if (stage, block) != (4, 2)}
    assert sum(isinstance(m, PermutedSum) for m in deployed.modules()) == len(fused)
    rebuilt = deploy.rebuild(flgc.convert_model(torchvision.models.resnet50(weights=None), groups=8),
                             deployed.deploy_spec)
    rebuilt.load_state_dict(deployed.state_dict())
    rebuilt = rebuilt.eval().to(memory_format=torch.channels_last)
    assert sum(isinstance(m, GroupedConv) and m.native for m in rebuilt.modules()) == 33
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, compiled, again = model(x), deployed(x), rebuilt(x)
        monkeypatch.setattr(native, "eligible", lambda *tensors: False)
        fallback = deployed(x)
    for y in (compiled, again, fallback):
        assert float((y - expected).abs().max()) <= TOLERANCE
    # the same MACs, counted alike: the kernel runs here (channels_last) and its conv's hook does not fire
    as_convs = deploy.deploy_model(model, strategy="conv", input_size=(3, 32, 32))
    assert flops.count(deployed, (3, 32, 32))[0] == flops.count(as_convs, (3, 32, 32))[0]


class ReadAgain(nn.Module):
    """Residual sums read by FLGC convs, whose other operand is read again later, is the caller's
    input, or is read by nothing after the sum."""

    def __init__(self):
        super().__init__()
        # with 4 groups, 8 or 16 filters per group: the fused kernel runs
        self.first, self.second, self.third = nn.Conv2d(32, 64, 1), nn.Conv2d(64, 64, 1), nn.Conv2d(64, 32, 1)
        self.fourth, self.fifth, self.sixth, self.seventh, self.eighth = (nn.Conv2d(32, 32, 1) for _ in range(5))
        self.ninth = nn.Conv2d(64, 32, 1)

    def forward(self, x):
        y = self.first(x)
        s = self.second(y.relu()) + y  # y: read again by ninth
        t = self.fourth(self.third(s)) + x  # x: the caller's
        v = self.sixth(self.fifth(t)) + self.seventh(t)  # seventh's output: read by nothing after
        return self.eighth(v) + self.ninth(y)


@needs_kernels
def test_a_fused_sum_writes_over_its_other_operand_only_where_nothing_reads_it_later():
    torch.manual_seed(8)
    # balanced groups: no padding, so each sum has its other operand's channel count and may take its memory
    model = randomise(assign_balanced(flgc.convert_model(ReadAgain(), groups=4), 8), 8).eval()
    deployed = deploy.deploy_model(model, strategy="native", input_size=(32, 5, 3)).to(memory_format=torch.channels_last)
    fused = {name: m.overwrite for name, m in deployed.named_modules() if isinstance(m, GroupedConv) and m.epilogue}
    assert fused == {"second": False, "fourth": False, "sixth": True}
    x = torch.randn(3, 32, 5, 3).contiguous(memory_format=torch.channels_last)
    kept = x.clone()
    with torch.no_grad():
        expected, out = model(x), deployed(x)
    assert torch.equal(x, kept)
    assert float((out - expected).abs().max()) <= TOLERANCE
    ort = pytest.importorskip("onnxruntime")  # exported, the fused convs are a conv and the sum's gathers
    session = ort.InferenceSession(export.onnx_bytes(deployed, 3, (32, 5, 3)), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": x.contiguous().numpy()})[0])
    assert float((exported - expected).abs().max()) <= TOLERANCE


class LateReader(nn.Module):
    """b is read by q, whose output is the first operand of the second sum: fused into that sum, q
    reads b after the first sum, which must not have written over b."""

    def __init__(self):
        super().__init__()
        self.p, self.q, self.r, self.s, self.t = (nn.Conv2d(32, 32, 1) for _ in range(5))

    def forward(self, x):
        b = self.p(x)
        y = self.q(b)
        z = self.s(self.r(x) + b)
        return self.t(y + z)


@needs_kernels
def test_a_conv_moved_to_its_fused_sum_still_reads_its_input_before_anything_writes_over_it():
    model = randomise(assign_balanced(flgc.convert_model(LateReader(), groups=4), 9), 9).eval()
    deployed = deploy.deploy_model(model, strategy="native", input_size=(32, 5, 3)).to(memory_format=torch.channels_last)
    fused = {name: m.overwrite for name, m in deployed.named_modules() if isinstance(m, GroupedConv) and m.epilogue}
    assert fused == {"r": False, "q": True}  # q's sum may take z's memory; r's may not take b's
    x = torch.randn(2, 32, 5, 3).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert float((deployed(x) - model(x)).abs().max()) <= TOLERANCE


def test_a_native_grouped_conv_under_autograd_takes_the_conv():
    module = GroupedConv(16, 16, 16, 16, 4, native=True)
    x = torch.randn(2, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    y = module(x)  # grad enabled, weight requires grad: the kernel has no backward
    assert y.requires_grad
    y.sum().backward()
    assert module.conv.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(module(x), F.conv2d(x, module.conv.weight, module.conv.bias, groups=4), atol=1e-5)
