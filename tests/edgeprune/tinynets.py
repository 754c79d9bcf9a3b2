"""Tiny models for end-to-end tests (imported by module:factory from the tests folder)."""

from edgeprune.pipeline.resnet_cifar import CifarResNet


def tiny_resnet(num_classes: int = 10, in_channels: int = 1):
    """A 6-block CIFAR ResNet (4 identity blocks) with 4/8/16 channels."""
    return CifarResNet(14, num_classes, in_channels, widths=(4, 8, 16))


def tiny_wide_resnet(num_classes: int = 10, in_channels: int = 1):
    """A 6-block CIFAR ResNet wide enough for the channel lever (16/32/32 channels: groups of 16+)."""
    return CifarResNet(14, num_classes, in_channels, widths=(16, 32, 32))
