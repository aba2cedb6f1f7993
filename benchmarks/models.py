"""Models of the paper: the CIFAR ResNet-18 and the TRADES/MART WideResNet-34-10, plus a tiny CNN for smoke runs,
and CIFAR-sized Vision Transformers (timm) for PART on a ViT.

Inputs are images in [0, 1] with no normalisation layer, as in the paper and the authors' code. Build one with
:func:`build_model` (``"tiny"``, ``"resnet18"``, ``"wrn-34-10"``, ``"vit-cifar"``, ``"vit-tiny-test"``) or the named
constructors.

CAM target layers (``CAM_LAYERS``; what :func:`torchattacks_part.cam_maps` picks with ``target_layer=None``: for the
CNNs the layers the PART authors used, for the ViTs the last block's first norm, as pytorch-grad-cam recommends):

=============  ==================  ==============================  =================================================
model          layer               feature map on 32x32            on 64x64 (TinyImageNet)
=============  ==================  ==============================  =================================================
resnet18       ``layer4``          512 x 4 x 4                     512 x 8 x 8
wrn-34-10      ``block3``          640 x 8 x 8                     640 x 16 x 16 (both before the final BN + ReLU)
tiny           ``features``        32 x 8 x 8                      32 x 16 x 16
vit-cifar      ``blocks.5.norm1``  65 tokens x 192 -> 192 x 8 x 8  32x32 only (fixed position embedding)
vit-tiny-test  ``blocks.1.norm1``  17 tokens x 32 -> 32 x 4 x 4    32x32 only
=============  ==================  ==============================  =================================================

The ViTs' CAM layer outputs tokens (class token + patch tokens); :mod:`torchattacks_part.cam` drops the class token
and lays the patch tokens out on the patch grid, as pytorch-grad-cam's ViT ``reshape_transform`` does.

Both paper networks end in a global average pool (``adaptive_avg_pool2d``), so they also take 64x64 inputs; on 32x32
that is exactly the fixed 4x4 / 8x8 pool of the original code, and the state-dict keys are the original ones.
"""

import importlib.resources

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CAM_LAYERS", "MODELS", "ResNet", "TinyCNN", "WideResNet", "build_model", "pretrained_resnet18",
           "resnet18", "vit_cifar", "vit_tiny_test", "wide_resnet34_10"]


# ----------------------------------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, projection shortcut when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (Kuang Liu's pytorch-cifar, as in ``pyautoattack/examples/resnet.py``): 3x3 stem, no max-pool.

    The module names and state-dict keys are those of ``pyautoattack.examples.resnet.ResNet``, so its checkpoints
    (and those of most CIFAR robustness code) load unchanged.
    """

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 4) on 32x32 inputs
        return self.linear(out)


def resnet18(num_classes=10):
    """CIFAR ResNet-18, about 11.17M parameters for 10 classes. CAM layer ``layer4`` (512x4x4 on 32x32)."""
    return ResNet((2, 2, 2, 2), num_classes)


# ----------------------------------------------------------------------------------------------------- WRN-34-10


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block of the TRADES / MART WideResNet (module names as there)."""

    def __init__(self, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, kernel_size=1,
                                                                     stride=stride, padding=0, bias=False)

    def forward(self, x):
        if self.equal_in_out:
            out = self.relu1(self.bn1(x))
        else:
            x = self.relu1(self.bn1(x))
            out = x
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equal_in_out else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    """``nb_layers`` wide blocks; the first one changes width and stride. Holds them as ``self.layer``."""

    def __init__(self, nb_layers, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """The WideResNet of TRADES and MART (and the PART authors): conv1, block1..block3, final bn1 + ReLU, fc.

    State-dict keys follow that code, except that its unused ``sub_block1`` (never called in ``forward``) is left
    out: to load a TRADES / MART checkpoint, drop the keys starting with ``sub_block1.`` (or ``strict=False``).

    :param depth: 6n + 4 (34 -> n = 5 blocks per stage). :param widen_factor: width multiplier k (10).
    :param drop_rate: dropout inside the blocks (0, as in the paper).
    """

    def __init__(self, depth=34, num_classes=10, widen_factor=10, drop_rate=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.n_channels = channels[3]
        for m in self.modules():  # the initialisation of the TRADES code
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 8) on 32x32 inputs
        return self.fc(out)


def wide_resnet34_10(num_classes=10):
    """WRN-34-10, about 46.16M parameters for 10 classes. CAM layer ``block3`` (640x8x8 on 32x32)."""
    return WideResNet(depth=34, num_classes=num_classes, widen_factor=10, drop_rate=0.0)


# ----------------------------------------------------------------------------------------------------- tiny


class TinyCNN(nn.Module):
    """Two conv blocks and a linear head (about 5k parameters): 8x8 CAM maps on 32x32, for smoke runs and tests."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def tiny_cnn(num_classes=10):
    return TinyCNN(num_classes)


# ----------------------------------------------------------------------------------------------------- ViT


def _cifar_vit(num_classes, patch_size, embed_dim, depth, num_heads, mlp_ratio):
    # timm's class itself (not timm.create_model): nothing pretrained, nothing downloaded.
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=patch_size, in_chans=3, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                             class_token=True, global_pool="token")


def vit_cifar(num_classes=10):
    """ViT for 32x32 inputs (DeiT-Tiny width): patch 4 (8x8 grid + class token), dim 192, depth 6, 3 heads, MLP x4;
    2,693,578 parameters for 10 classes. CAM layer ``blocks.5.norm1`` (tokens -> 192x8x8)."""
    return _cifar_vit(num_classes, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)


def vit_tiny_test(num_classes=10):
    """A very small ViT for tests: patch 8 (4x4 grid + class token), dim 32, depth 2, 2 heads, MLP x2 (24,234
    parameters for 10 classes). CAM layer ``blocks.1.norm1`` (tokens -> 32x4x4)."""
    return _cifar_vit(num_classes, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


# ----------------------------------------------------------------------------------------------------- registry

#: name -> constructor(num_classes)
MODELS = {"tiny": tiny_cnn, "resnet18": resnet18, "wrn-34-10": wide_resnet34_10, "vit-cifar": vit_cifar,
          "vit-tiny-test": vit_tiny_test}

#: name -> dotted name of the CAM target layer (the one ``cam_maps(..., target_layer=None)`` picks).
CAM_LAYERS = {"tiny": "features", "resnet18": "layer4", "wrn-34-10": "block3", "vit-cifar": "blocks.5.norm1",
              "vit-tiny-test": "blocks.1.norm1"}


def build_model(name, num_classes=10):
    """A freshly initialised model by name: one of ``MODELS`` (``"tiny"``, ``"resnet18"``, ``"wrn-34-10"``,
    ``"vit-cifar"``, ``"vit-tiny-test"``)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return MODELS[name](num_classes)


def pretrained_resnet18(device="cpu"):
    """The CIFAR-10 ResNet-18 shipped in the pyautoattack wheel (standard training, ~94% clean accuracy, not robust).

    Architecture from ``pyautoattack/examples/resnet.py`` (3x3 stem, no max-pool: ``layer4`` is 4x4 on 32x32
    inputs, the CAM layer). Loaded with ``weights_only=True``; nothing is downloaded. Returned in eval mode.
    """
    from pyautoattack.examples.resnet import ResNet18

    weights = importlib.resources.files("pyautoattack") / "examples" / "model_test.pt"
    with importlib.resources.as_file(weights) as path:
        state = torch.load(path, map_location=device, weights_only=True)
    model = ResNet18()
    model.load_state_dict(state)
    return model.to(device).eval()
