"""PyTorch eager anchor for dmue-train's step: the same networks, timed the same way.

    python3 scripts/lib/eager_step.py [--width 64] [--crop 224] [--batch 72] [--steps 20]

Builds ResNet-18 (train/tests/torch_reference.py, no dmue code) as the baseline (trunk + layer4
+ a 7-way head) and as DMUE the way a PyTorch user writes it: the trunk once, then the target
branch and C = 7 auxiliary copies of layer4 one after another, each with its head. The loss is
cross-entropy on every head (DMUE's extra terms are tiny next to the convolutions); the
optimizer is torch.optim.Adam with its default (foreach) kernels. Prints one line per setting:
img/s of the baseline and of DMUE, fp32 and bf16 autocast, NCHW and channels-last, on CUDA
when present (else CPU, for a smoke test).
"""
import argparse
import copy
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "train", "tests"))
from torch_reference import ResNet18  # noqa: E402

C = 7


class Net(nn.Module):
    def __init__(self, width, dmue):
        super().__init__()
        r = ResNet18(width, "torchvision")
        self.stem = nn.Sequential(r.conv1, r.bn1, nn.ReLU(), nn.MaxPool2d(3, 2, 1), r.layer1, r.layer2, r.layer3)
        self.layer4, self.fc = r.layer4, nn.Linear(8 * width, C, bias=False)
        n = C if dmue else 0
        self.aux = nn.ModuleList(copy.deepcopy(r.layer4) for _ in range(n))
        self.aux_fc = nn.ModuleList(nn.Linear(8 * width, C - 1, bias=False) for _ in range(n))

    def forward(self, x, y):
        t = self.stem(x)
        loss = F.cross_entropy(self.fc(self.layer4(t).mean(dim=(2, 3))), y)
        for j, (b, fc) in enumerate(zip(self.aux, self.aux_fc)):
            keep = y != j
            yj = (y[keep] - (y[keep] > j).long())
            loss = loss + F.cross_entropy(fc(b(t).mean(dim=(2, 3)))[keep], yj)
        return loss


def rate(width, crop, batch, steps, dmue, bf16, channels_last, device):
    torch.manual_seed(0)
    net = Net(width, dmue).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, crop, crop, device=device).to(memory_format=fmt)
    y = torch.randint(0, C, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(5):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch", type=int, default=72)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"eager PyTorch {torch.__version__} on {name}: ResNet-18 width {a.width}, {a.crop}x{a.crop}, batch {a.batch}")
    print(f"{'precision':<10} {'layout':<14} {'baseline img/s':>15} {'dmue img/s':>11} {'ratio':>6}")
    for bf16 in (False, True):
        if bf16 and device.type != "cuda":
            continue
        for cl in (False, True):
            base = rate(a.width, a.crop, a.batch, a.steps, False, bf16, cl, device)
            dmue = rate(a.width, a.crop, a.batch, a.steps, True, bf16, cl, device)
            print(f"{'bf16' if bf16 else 'fp32':<10} {'channels-last' if cl else 'NCHW':<14} "
                  f"{base:>15.1f} {dmue:>11.1f} {dmue / base:>6.3f}")


if __name__ == "__main__":
    main()
