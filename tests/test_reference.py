"""Reference-implementation checkpoints: built here from its description, converted, compared."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import run_main

from flgc.engine import checkpoint

SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class ReferenceFLGC(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.in_channels_in_group_assignment_map = nn.Parameter(torch.randn(cin, groups))
        self.out_channels_in_group_assignment_map = nn.Parameter(torch.randn(cout, groups))
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        def onehot(m):
            s = torch.softmax(m, dim=1)
            return F.one_hot(s.argmax(1), m.shape[1]).float()
        mask = onehot(self.out_channels_in_group_assignment_map) @ onehot(self.in_channels_in_group_assignment_map).t()
        return F.conv2d(x, self.conv.weight * mask[:, :, None, None])


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))


class ReferenceBlock(nn.Module):
    def __init__(self, cin, cout, stride, t, projection):
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [conv_bn(cin, hidden)]
        layers += [conv_bn(hidden, hidden, 3, stride, hidden), projection(hidden, cout), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1
        if stride == 1 and cin != cout:
            self.shortcut = conv_bn(cin, cout, act=False)
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = self.conv(x)
        return out + self.shortcut(x) if self.residual else out


class ReferenceMobileNetV2(nn.Module):
    """The reference's module naming: features.0 stem, features.1-17 blocks, features.18 head."""

    def __init__(self, kind, groups=8):
        super().__init__()
        projection = {"dense": lambda i, o: nn.Conv2d(i, o, 1, bias=False),
                      "group": lambda i, o: nn.Conv2d(i, o, 1, groups=groups, bias=False),
                      "flgc": lambda i, o: ReferenceFLGC(i, o, groups)}[kind]
        layers, cin = [conv_bn(3, 32, 3)], 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(ReferenceBlock(cin, c, s if i == 0 else 1, t, projection))
                cin = c
        layers.append(conv_bn(cin, 1280))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, 10)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def reference_checkpoint(path, kind, groups=8):
    torch.manual_seed(0)
    model = ReferenceMobileNetV2(kind, groups)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    torch.save({"state_dict": model.state_dict(), "optimizer_state_dict": {}, "lr_scheduler_state_dict": {},
                "best_accuracy": 93.7, "last_epoch": 399}, path)
    return model.eval()


@pytest.mark.parametrize("kind, groups", [("dense", 1), ("group", 8), ("flgc", 8), ("flgc", 4)])
def test_converted_checkpoint_gives_the_reference_logits(tmp_path, kind, groups, capsys):
    src, dst = tmp_path / "ref.pth", tmp_path / "ours.pt"
    reference = reference_checkpoint(src, kind, groups)
    assert run_main("scripts/convert_reference_checkpoint.py", src, dst) == 0, capsys.readouterr().err
    ours, _, payload = checkpoint.load_model(str(dst))
    assert payload["config"]["flgc"]["pointwise"] == kind
    assert payload["config"]["flgc"]["groups"] == max(groups, 1) or kind == "dense"
    assert payload["best_accuracy"] == 93.7 and payload["epoch"] == 399
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (ours.eval()(x) - reference(x)).abs().max() < 1e-4


def test_convert_refuses_bad_input(tmp_path, capsys):
    src = tmp_path / "ref.pth"
    reference_checkpoint(src, "dense")
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"keep me")
    assert run_main("scripts/convert_reference_checkpoint.py", src, existing) == 2
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    ours = tmp_path / "ours.pt"
    torch.save({"format_version": 1, "config": {}, "model": {}}, ours)
    assert run_main("scripts/convert_reference_checkpoint.py", ours, tmp_path / "out.pt") == 2
    err = capsys.readouterr().err
    assert "not a reference checkpoint" in err and len(err.strip().splitlines()) == 1
