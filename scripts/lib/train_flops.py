"""FLOPs of one training step (forward + backward) of the baseline and of DMUE, ResNet-18.

    python3 scripts/lib/train_flops.py WIDTH CROP BATCH CLASSES

Counted by PyTorch's own FlopCounterMode on an independent ResNet-18 (train/tests/
torch_reference.py, no dmue code): the baseline is trunk + layer4 + a C-way head; DMUE is the
trunk once, then C + 1 copies of layer4 with their heads (C-way target, C (C-1)-way auxiliaries).
The losses' own arithmetic is left out (it is tiny next to the convolutions). Prints one JSON
line: baseline and DMUE GFLOPs per step and their ratio.
"""
import copy
import json
import os
import sys

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "train", "tests"))
from torch_reference import ResNet18  # noqa: E402


def trunk(net, x):
    x = net.bn1(net.conv1(x))
    x = torch.nn.functional.max_pool2d(torch.relu(x), 3, 2, 1)
    return net.layer3(net.layer2(net.layer1(x)))


def step_flops(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn().sum().backward()
    return counter.get_total_flops()


def main():
    w, crop, batch, c = (int(a) for a in sys.argv[1:5])
    torch.manual_seed(0)
    net = ResNet18(w, "torchvision")
    x = torch.randn(batch, 3, crop, crop)
    target_fc = nn.Linear(8 * w, c, bias=False)

    def baseline():
        return target_fc(net.layer4(trunk(net, x)).mean(dim=(2, 3)))

    branches = [copy.deepcopy(net.layer4) for _ in range(c)]
    aux_fc = [nn.Linear(8 * w, c - 1, bias=False) for _ in range(c)]

    def dmue():
        t = trunk(net, x)
        outs = [target_fc(net.layer4(t).mean(dim=(2, 3)))]
        outs += [fc(b(t).mean(dim=(2, 3))) for b, fc in zip(branches, aux_fc)]
        return torch.cat([o.flatten() for o in outs])

    base, multi = step_flops(baseline), step_flops(dmue)
    print(json.dumps({
        "width": w, "crop": crop, "batch": batch, "classes": c,
        "baseline_gflops": round(base / 1e9, 3), "dmue_gflops": round(multi / 1e9, 3),
        "flop_ratio": round(multi / base, 3),
    }))


if __name__ == "__main__":
    main()
