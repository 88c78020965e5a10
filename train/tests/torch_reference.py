"""Independent PyTorch references for the pretrained-weight tests (train/tests/pretrained.rs).

  resnet18 WIDTH STEM OUT   a torchvision-named ResNet-18 of the given width with random weights
                            and BatchNorm statistics (stem: torchvision | authors), saved as
                            OUT/weights.pth (under "state_dict", keys prefixed "module."),
                            plus OUT/input.bin and the pooled layer4 features OUT/output.bin.
  resnet50_ibn WIDTH OUT    the same for an IBN-Net-named ResNet-50-IBN-a (bn1.IN / bn1.BN in
                            layer1..3), without prefixes.
  shufflenet_v1 WIDTH OUT   the same for a ShuffleNetV1 (groups 3) with Megvii's names and
                            unit layout (first_conv, features.N.branch_main_1/2).
  mobilenet_v2 PTH OUT      torchvision's ImageNet MobileNetV2 checkpoint run by a functional
                            forward written here: OUT/input.bin and the 1000 logits OUT/output.bin.

Inputs are [2, 3, 64, 64] float32 (seed 0); .bin files are raw little-endian float32.
Nothing here imports dmue code: names and layer order follow torchvision's definitions.
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, w, stem):
        super().__init__()
        self.stem = stem
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        chans = [w, w, 2 * w, 4 * w, 8 * w]
        for i in range(4):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(chans[i], chans[i + 1], stride), BasicBlock(chans[i + 1], chans[i + 1], 1))
            setattr(self, f"layer{i + 1}", layer)
        self.fc = nn.Linear(8 * w, 1000)

    def features(self, x):
        x = self.bn1(self.conv1(x))
        if self.stem == "torchvision":
            x = F.max_pool2d(F.relu(x), 3, 2, 1)
        else:  # the authors' MS-Celeb stem: no ReLU, 2x2 pooling
            x = F.max_pool2d(x, 2, 2, 0)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class IBN(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.half = planes // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], 1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], 1)


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, ibn):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50IBN(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        cin = w
        for i, n in enumerate([3, 4, 6, 3]):
            planes = w * 2 ** i
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, planes, 2 if (b == 0 and i > 0) else 1, i < 3))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, 1000)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride, first, g=3):
        super().__init__()
        mid, self.stride, self.g = cout // 4, stride, g
        out = cout - cin if stride == 2 else cout
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(cin, mid, 1, groups=1 if first else g, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.branch_main_2 = nn.Sequential(nn.Conv2d(mid, out, 1, groups=g, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.branch_main_1(x)
        b, c, h, w = y.shape
        y = y.reshape(b, c // self.g, self.g, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
        y = self.branch_main_2(y)
        if self.stride == 1:
            return F.relu(x + y)
        return torch.cat([F.avg_pool2d(x, 3, 2, 1), F.relu(y)], 1)


class ShuffleNetV1(nn.Module):
    STEM = {120: 12, 240: 24, 360: 24, 480: 48}

    def __init__(self, w):
        super().__init__()
        cin = self.STEM[w]
        self.first_conv = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU())
        units = []
        for stage, n in enumerate([4, 8, 4]):
            for i in range(n):
                units.append(ShuffleUnit(cin, w * 2 ** stage, 2 if i == 0 else 1, stage == 0 and i == 0))
                cin = w * 2 ** stage
        self.features = nn.Sequential(*units)
        self.classifier = nn.Sequential(nn.Linear(cin, 1000, bias=False))

    def features_out(self, x):
        x = F.max_pool2d(self.first_conv(x), 3, 2, 1)
        return self.features(x).mean(dim=(2, 3))


def shufflenet_v1(width, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net = ShuffleNetV1(width)
    randomise(net)
    net.eval()
    with torch.no_grad():
        y = net.features_out(x)
    torch.save({"state_dict": net.state_dict()}, f"{out}/weights.pth")
    return x, y


def randomise(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def resnet50_ibn(width, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net = ResNet50IBN(width)
    randomise(net)
    net.eval()
    with torch.no_grad():
        y = net.features(x)
    torch.save(net.state_dict(), f"{out}/weights.pth")
    return x, y


def resnet18(width, stem, out):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    net = ResNet18(width, stem)
    randomise(net)
    net.eval()
    with torch.no_grad():
        y = net.features(x)
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, f"{out}/weights.pth")
    return x, y


def mobilenet_v2(pth, out):
    sd = torch.load(pth, map_location="cpu", weights_only=True)

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    def conv(x, p, stride=1, groups=1):
        w = sd[p + ".weight"]
        return F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups)

    # (t, c, n, s) from the MobileNetV2 paper, Table 2.
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    strides = [s if i == 0 else 1 for (_, _, n, s) in settings for i in range(n)]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = F.relu6(bn(conv(x, "features.0.0", 2), "features.0.1"))
        for i, stride in enumerate(strides, start=1):
            p = f"features.{i}.conv"
            h = y
            if f"{p}.3.weight" in sd:  # expansion 1x1, depthwise, projection
                h = F.relu6(bn(conv(h, f"{p}.0.0"), f"{p}.0.1"))
                h = F.relu6(bn(conv(h, f"{p}.1.0", stride, h.shape[1]), f"{p}.1.1"))
                h = bn(conv(h, f"{p}.2"), f"{p}.3")
            else:  # no expansion: depthwise, projection
                h = F.relu6(bn(conv(h, f"{p}.0.0", stride, h.shape[1]), f"{p}.0.1"))
                h = bn(conv(h, f"{p}.1"), f"{p}.2")
            y = y + h if stride == 1 and y.shape[1] == h.shape[1] else h
        y = F.relu6(bn(conv(y, "features.18.0"), "features.18.1"))
        y = F.linear(y.mean(dim=(2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])
    return x, y


def main():
    arch = sys.argv[1]
    if arch == "resnet18":
        out = sys.argv[4]
        x, y = resnet18(int(sys.argv[2]), sys.argv[3], out)
    elif arch == "resnet50_ibn":
        out = sys.argv[3]
        x, y = resnet50_ibn(int(sys.argv[2]), out)
    elif arch == "shufflenet_v1":
        out = sys.argv[3]
        x, y = shufflenet_v1(int(sys.argv[2]), out)
    elif arch == "mobilenet_v2":
        out = sys.argv[3]
        x, y = mobilenet_v2(sys.argv[2], out)
    else:
        raise SystemExit(f"unknown architecture {arch}")
    x.numpy().astype("<f4").tofile(f"{out}/input.bin")
    y.numpy().astype("<f4").tofile(f"{out}/output.bin")
    print(tuple(y.shape))


if __name__ == "__main__":
    main()
