"""ltrain's multi-expert ResNets in plain PyTorch, under the names and shapes ltrain writes.

A network is a shared trunk (`shared.*`) and K experts (`experts.{k}.*`) that each end in a
linear classifier; at test time ltrain averages the experts' softmax.

- ResNet-32 (CIFAR): trunk = conv3x3(3->16) + BN + ReLU + `layer1` (5 basic blocks, 16 ch);
  expert = `layer2` + `layer3` (5 basic blocks each, stride 2; widths 32/64 "full" or 24/48
  "reduced") + global average pooling + `fc`. Option-A shortcuts (subsample, zero-pad channels).
- ResNet-50 / ResNeXt-50 32x4d (ImageNet): trunk = torchvision's stem + `layer1` + `layer2`;
  expert = `layer3` + `layer4` + pooling + `fc`. torchvision v1.5 bottlenecks.

Load a run and evaluate it:

    import ltrain_models                                  # python/ of the ltrain repository
    model = ltrain_models.load("runs/x/model.safetensors")   # strict load_state_dict, eval mode
    x = ltrain_models.normalize(images_uint8)             # [n, 3, 32, 32], CIFAR mean / std
    probs = model.predict(x)                              # mean of the experts' softmax
    logits = model(x)                                     # one [n, classes] tensor per expert

    python python/ltrain_models.py runs/x/model.safetensors --test-file test_batch.bin

Needs PyTorch alone (no torchvision, no `safetensors` package). Without PyTorch the module still
imports: `expected_state_dict_shapes`, `read_header` and `describe` work on plain Python.
"""

import argparse
import json
import re
import struct

try:
    import torch
    import torch.nn.functional as F
    from torch import nn

    Module = nn.Module
except ModuleNotFoundError:  # names, shapes and file headers need no PyTorch
    torch = F = nn = None
    Module = object

# Per-channel input normalisation `(v / 255 - mean) / std`, as ltrain's data pipeline does it.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

KINDS = ("resnet32", "resnet50", "resnext50_32x4d")
RESNET32_WIDTHS = {"full": (32, 64), "reduced": (24, 48)}  # channels of layer2, layer3
BOTTLENECK_GROUPS = {"resnet50": (1, 64), "resnext50_32x4d": (32, 4)}  # (groups, base width)


def _plan(kind, expert_width="reduced"):
    """The stem `(channels, kernel, stride, max-pool)`, the trunk's and one expert's stages
    `(name, c_in, planes, blocks, stride)` and the classifier's input width."""
    if kind == "resnet32":
        w2, w3 = RESNET32_WIDTHS[expert_width]
        trunk = [("layer1", 16, 16, 5, 1)]
        expert = [("layer2", 16, w2, 5, 2), ("layer3", w2, w3, 5, 2)]
        return (16, 3, 1, False), trunk, expert, w3
    if kind in BOTTLENECK_GROUPS:
        trunk = [("layer1", 64, 64, 3, 1), ("layer2", 256, 128, 4, 2)]
        expert = [("layer3", 512, 256, 6, 2), ("layer4", 1024, 512, 3, 2)]
        return (64, 7, 2, True), trunk, expert, 2048
    raise ValueError(f"unknown model kind {kind!r} (one of {', '.join(KINDS)})")


def _block_channels(kind, planes):
    """Output channels of a block: `planes` (basic) or 4 * planes (bottleneck)."""
    return planes if kind == "resnet32" else 4 * planes


# ---- the state dict's names and shapes, without PyTorch -----------------------------------------


def _conv(name, c_out, c_in, k):
    return [(f"{name}.weight", [c_out, c_in, k, k], "F32")]


def _bn(name, c):
    stats = [(f"{name}.{s}", [c], "F32") for s in ("weight", "bias", "running_mean", "running_var")]
    return stats + [(f"{name}.num_batches_tracked", [], "I64")]


def _block_keys(kind, name, c_in, planes, stride):
    if kind == "resnet32":
        return (_conv(f"{name}.conv1", planes, c_in, 3) + _bn(f"{name}.bn1", planes)
                + _conv(f"{name}.conv2", planes, planes, 3) + _bn(f"{name}.bn2", planes))
    groups, base_width = BOTTLENECK_GROUPS[kind]
    width, c_out = planes * base_width // 64 * groups, 4 * planes
    keys = (_conv(f"{name}.conv1", width, c_in, 1) + _bn(f"{name}.bn1", width)
            + _conv(f"{name}.conv2", width, width // groups, 3) + _bn(f"{name}.bn2", width)
            + _conv(f"{name}.conv3", c_out, width, 1) + _bn(f"{name}.bn3", c_out))
    if stride != 1 or c_in != c_out:
        keys += _conv(f"{name}.downsample.0", c_out, c_in, 1) + _bn(f"{name}.downsample.1", c_out)
    return keys


def _stage_keys(kind, prefix, stages):
    keys = []
    for name, c_in, planes, blocks, stride in stages:
        for i in range(blocks):
            keys += _block_keys(kind, f"{prefix}.{name}.{i}", c_in, planes, stride if i == 0 else 1)
            c_in = _block_channels(kind, planes)
    return keys


def expected_state_dict_shapes(kind, num_classes, experts=3, expert_width="reduced"):
    """`[(name, shape, dtype)]` of the network's `state_dict()`, in its order, computed without
    PyTorch: what ltrain writes to `model.safetensors` (dtype "F32", or "I64" for
    `num_batches_tracked`). `expert_width` matters to ResNet-32 alone."""
    (c, k, _, _), trunk, expert, d = _plan(kind, expert_width)
    keys = _conv("shared.conv1", c, 3, k) + _bn("shared.bn1", c)
    keys += _stage_keys(kind, "shared", trunk)
    for e in range(experts):
        keys += _stage_keys(kind, f"experts.{e}", expert)
        keys += [(f"experts.{e}.fc.weight", [num_classes, d], "F32"),
                 (f"experts.{e}.fc.bias", [num_classes], "F32")]
    return keys


# ---- reading model.safetensors ------------------------------------------------------------------


def read_header(path):
    """`(tensors, metadata)` of a safetensors file: name -> {dtype, shape, data_offsets}, and the
    string metadata (ltrain stores its configuration as TOML under `ltrain.config`)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, header.pop("__metadata__", None) or {}


def describe(path):
    """The constructor arguments of the network in a `model.safetensors`: `kind`, `num_classes`,
    `experts`, `expert_width`. The model, expert count and width come from ltrain's configuration
    in the metadata, or else are read off the tensor shapes; the classes from `experts.0.fc`."""
    tensors, metadata = read_header(path)
    config = dict(re.findall(r'^(model|experts|expert_width) = "?([\w-]+)"?$',
                             metadata.get("ltrain.config", ""), re.MULTILINE))
    shape = {name: t["shape"] for name, t in tensors.items()}
    if "model" in config:
        kind = config["model"]
    elif "shared.layer2.0.conv1.weight" not in shape:
        kind = "resnet32"
    else:  # ResNeXt's grouped 3x3 convolutions see 4 input channels each
        kind = "resnext50_32x4d" if shape["shared.layer1.0.conv2.weight"][1] == 4 else "resnet50"
    experts = int(config.get("experts") or 1 + max(
        int(name.split(".")[1]) for name in shape if name.startswith("experts.")))
    width = config.get("expert_width") or (
        "full" if shape.get("experts.0.layer2.0.conv1.weight", [32])[0] == 32 else "reduced")
    return dict(kind=kind, num_classes=shape["experts.0.fc.weight"][0], experts=experts,
                expert_width=width)


def read_state_dict(path):
    """Every tensor of a safetensors file as a PyTorch tensor, on the CPU."""
    dtypes = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}
    tensors, _ = read_header(path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    base = 8 + struct.unpack("<Q", data[:8])[0]
    out = {}
    for name, t in tensors.items():
        dtype, (start, end) = dtypes[t["dtype"]], t["data_offsets"]
        count = (end - start) // dtype.itemsize
        out[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(
            t["shape"])
    return out


# ---- the networks -------------------------------------------------------------------------------


class BasicBlock(Module):
    """ResNet-32's block: two 3x3 convolutions, the stride on the first; where the shape changes,
    option-A shortcut (subsample by the stride, zero-pad the channels equally on both sides)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, (c_out - c_in) // 2
        self.option_a = stride != 1 or c_in != c_out

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.option_a:
            s, p = self.stride, self.pad
            x = F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, p, p))
        return F.relu(out + x)


class Bottleneck(Module):
    """torchvision's v1.5 bottleneck (stride on the 3x3), projection shortcut `downsample`."""

    def __init__(self, c_in, planes, stride, groups, base_width):
        super().__init__()
        width, c_out = planes * base_width // 64 * groups, 4 * planes
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _stages(module, kind, stages):
    """Adds `stages` to `module` as `nn.Sequential` attributes (`layer1`, ...)."""
    for name, c_in, planes, blocks, stride in stages:
        layers = []
        for i in range(blocks):
            if kind == "resnet32":
                layers.append(BasicBlock(c_in, planes, stride if i == 0 else 1))
            else:
                groups, base_width = BOTTLENECK_GROUPS[kind]
                layers.append(Bottleneck(c_in, planes, stride if i == 0 else 1, groups, base_width))
            c_in = _block_channels(kind, planes)
        setattr(module, name, nn.Sequential(*layers))
    return [name for name, *_ in stages]


class Trunk(Module):
    """The layers every expert shares: `conv1`, `bn1`, ReLU (max-pool), the early stages."""

    def __init__(self, kind, stem, stages):
        super().__init__()
        c, k, stride, maxpool = stem
        self.conv1 = nn.Conv2d(3, c, k, stride, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        self.stage_names = _stages(self, kind, stages)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


class Expert(Module):
    """One expert: the late stages, global average pooling and the classifier `fc`."""

    def __init__(self, kind, stages, features, num_classes):
        super().__init__()
        self.stage_names = _stages(self, kind, stages)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, h):
        for name in self.stage_names:
            h = getattr(self, name)(h)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class MultiExpertNet(Module):
    """`shared` trunk + `experts` (an `nn.ModuleList`); `forward` returns each expert's logits,
    `predict` the mean of their softmax (ltrain's test-time output). The initialisation is
    PyTorch's default, not ltrain's: these networks are for loading ltrain's weights."""

    def __init__(self, kind, num_classes, experts=3, expert_width="reduced"):
        if torch is None:
            raise ModuleNotFoundError("ltrain_models: building a network needs PyTorch")
        super().__init__()
        stem, trunk, expert, features = _plan(kind, expert_width)
        self.kind, self.num_classes = kind, num_classes
        self.shared = Trunk(kind, stem, trunk)
        self.experts = nn.ModuleList(
            Expert(kind, expert, features, num_classes) for _ in range(experts))

    def forward(self, x):
        h = self.shared(x)
        return [expert(h) for expert in self.experts]

    def predict(self, x):
        """`[n, classes]` mean of the experts' softmax (without autograd)."""
        with torch.no_grad():
            return average_softmax(self(x))


def average_softmax(logits):
    """The mean of the softmax of each expert's `[n, classes]` logits."""
    return torch.stack([l.softmax(1) for l in logits]).mean(0)


def resnet32_experts(num_classes, experts=3, expert_width="reduced"):
    """CIFAR ResNet-32 with `experts` experts of width "full" (32/64) or "reduced" (24/48)."""
    return MultiExpertNet("resnet32", num_classes, experts, expert_width)


def resnet50_experts(num_classes, experts=3):
    """torchvision's ResNet-50 split after `layer2` into a trunk and `experts` experts."""
    return MultiExpertNet("resnet50", num_classes, experts)


def resnext50_32x4d_experts(num_classes, experts=3):
    """torchvision's ResNeXt-50 32x4d split after `layer2` into a trunk and `experts` experts."""
    return MultiExpertNet("resnext50_32x4d", num_classes, experts)


def load(path, device="cpu"):
    """The network of an ltrain `model.safetensors` (or `checkpoint.safetensors`: the optimizer's
    and SLA's tensors are left out), its weights loaded with `strict=True`, in eval mode."""
    model = MultiExpertNet(**describe(path))
    state = {k: v for k, v in read_state_dict(path).items()
             if k.startswith(("shared.", "experts."))}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# ---- evaluation on a CIFAR record file ----------------------------------------------------------


def read_cifar(path, num_classes):
    """`(images uint8 [n, 3, 32, 32], labels [n])` of a CIFAR binary record file: a label byte and
    3072 pixels (CIFAR-10), or a coarse and a fine label byte then the pixels (CIFAR-100)."""
    label_bytes = 2 if num_classes == 100 else 1
    with open(path, "rb") as f:
        data = bytearray(f.read())
    record = label_bytes + 3 * 32 * 32
    if not data or len(data) % record:
        raise ValueError(f"{path}: {len(data)} bytes are not whole {record}-byte CIFAR records")
    rows = torch.frombuffer(data, dtype=torch.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].long()


def normalize(images, mean=CIFAR_MEAN, std=CIFAR_STD):
    """uint8 `[n, 3, h, w]` -> float `(v / 255 - mean) / std` per channel."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (mean, std))
    return (images.float() / 255 - mean) / std


def evaluate(model, images, batch_size=256, device="cpu"):
    """Per image `(prediction, confidence, [each expert's prediction])` of the averaged softmax,
    for uint8 `images` (normalised here with the CIFAR constants)."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(normalize(images[i:i + batch_size]).to(device))
            confidence, prediction = average_softmax(logits).max(1)
            experts = torch.stack([l.argmax(1) for l in logits], 1)
            rows += zip(prediction.tolist(), confidence.tolist(), experts.tolist())
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate an ltrain model.safetensors in PyTorch on "
                                            "a CIFAR binary test file (top-1, averaged softmax).")
    p.add_argument("model", help="model.safetensors (or checkpoint.safetensors) of an ltrain run")
    p.add_argument("--test-file", required=True, help="CIFAR record file, e.g. test_batch.bin")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--predictions", metavar="FILE.csv",
                   help="write index,label,prediction,confidence,expert0,... (as `ltrain eval`)")
    args = p.parse_args(argv)
    model = load(args.model, args.device)
    images, labels = read_cifar(args.test_file, model.num_classes)
    rows = evaluate(model, images, args.batch_size, args.device)
    correct = sum(pred == label for (pred, _, _), label in zip(rows, labels.tolist()))
    print(f"{model.kind}, {len(model.experts)} experts, {model.num_classes} classes: "
          f"top-1 {100 * correct / len(rows):.2f}% on {len(rows)} images")
    if args.predictions:
        with open(args.predictions, "w") as f:
            experts = "".join(f",expert{k}" for k in range(len(model.experts)))
            f.write(f"index,label,prediction,confidence{experts}\n")
            for i, ((pred, conf, per_expert), label) in enumerate(zip(rows, labels.tolist())):
                f.write(f"{i},{label},{pred},{conf:.6f}" + "".join(f",{e}" for e in per_expert)
                        + "\n")


if __name__ == "__main__":
    main()
