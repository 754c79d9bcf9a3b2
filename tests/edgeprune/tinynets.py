"""Tiny models for end-to-end tests (imported by module:factory from the tests folder)."""

from torch import nn

from edgeprune.pipeline.resnet_cifar import CifarResNet


def tiny_resnet(num_classes: int = 10, in_channels: int = 1):
    """A 6-block CIFAR ResNet (4 identity blocks) with 4/8/16 channels."""
    return CifarResNet(14, num_classes, in_channels, widths=(4, 8, 16))


def tiny_wide_resnet(num_classes: int = 10, in_channels: int = 1):
    """A 6-block CIFAR ResNet wide enough for the channel lever (16/32/32 channels: groups of 16+)."""
    return CifarResNet(14, num_classes, in_channels, widths=(16, 32, 32))


class _GroupedNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32),
                                     nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.grouped(self.stem(x)).mean((2, 3)))


def grouped_net(num_classes: int = 10, in_channels: int = 1):
    """A net with a grouped (not depthwise) convolution, which Torch-Pruning cannot prune correctly."""
    return _GroupedNet(num_classes, in_channels)


def plain_net(num_classes: int = 10, in_channels: int = 1):
    """A VGG-like net without residual blocks: only the channel lever has anything to pull."""
    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(stage(in_channels, 32), stage(32, 32), nn.MaxPool2d(2), stage(32, 64), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, num_classes))
