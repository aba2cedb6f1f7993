"""cam_maps against pytorch-grad-cam itself, on real CIFAR-10 images and a real ResNet-18."""

import numpy as np
import pytest
import pytorch_grad_cam
import torch
import torch.nn as nn
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from torchattacks_part import cam_maps

LIBRARY_CLASS = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


def library_maps(model, layer, images, method, targets=None):
    if targets is not None:
        targets = [ClassifierOutputTarget(int(t)) for t in targets]
    with getattr(pytorch_grad_cam, LIBRARY_CLASS.get(method, method))(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=images, targets=targets)


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam"])
@pytest.mark.parametrize("use_labels", [False, True])
def test_equals_pytorch_grad_cam_on_resnet18(resnet18, cifar_batch, method, use_labels):
    images, labels = cifar_batch
    targets = labels if use_labels else None
    ours = cam_maps(resnet18, images, target_layer=resnet18.layer4, method=method, targets=targets)
    reference = library_maps(resnet18, resnet18.layer4, images, method, targets)
    assert ours.shape == (32, 32, 32) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)
    # The maps are informative: not all empty, spread over [0, 1].
    assert ours.amax(dim=(1, 2)).min() > 0.99 and ours.amin(dim=(1, 2)).max() < 0.01


def test_default_layer_is_last_conv_block(resnet18, tiny_model, cifar_batch):
    images, _ = cifar_batch
    # ResNet: layer4 (the layer the PART authors used), found without being named.
    np.testing.assert_allclose(
        cam_maps(resnet18, images[:8]).numpy(), library_maps(resnet18, resnet18.layer4, images[:8], "gradcam"), atol=1e-4
    )
    # Tiny CNN: the outermost block holding the last conv is `features` (8x8 maps).
    np.testing.assert_allclose(
        cam_maps(tiny_model, images).numpy(), library_maps(tiny_model, tiny_model.features, images, "gradcam"),
        atol=1e-4,
    )
    # A dotted name means the same module.
    assert torch.equal(cam_maps(resnet18, images[:8], "layer4"), cam_maps(resnet18, images[:8], resnet18.layer4))


def test_default_layer_inside_a_wrapper(resnet18, cifar_batch):
    """A normalisation wrapper around the network must not make the logits the 'last block'."""
    images, _ = cifar_batch
    wrapped = nn.Sequential(nn.Identity(), resnet18)
    assert torch.equal(cam_maps(wrapped, images[:8]), cam_maps(resnet18, images[:8], resnet18.layer4))


def test_library_path_for_other_methods(resnet18, cifar_batch):
    images, labels = cifar_batch
    ours = cam_maps(resnet18, images[:8], "layer4", method="gradcam++", targets=labels[:8])
    reference = library_maps(resnet18, resnet18.layer4, images[:8], "GradCAMPlusPlus", labels[:8])
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6)
    assert ours.device == images.device


def test_batched_equals_per_image(tiny_model, cifar_batch):
    images, _ = cifar_batch
    together = cam_maps(tiny_model, images[:6])
    one_by_one = torch.cat([cam_maps(tiny_model, images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_model_mode_and_grads_untouched(tiny_model, cifar_batch, method):
    images, _ = cifar_batch
    tiny_model.train()
    tiny_model.head.eval()  # a mixed state must come back mixed
    marker = torch.full_like(tiny_model.head[2].weight, 3.0)
    tiny_model.head[2].weight.grad = marker.clone()
    cam_maps(tiny_model, images[:4], method=method)
    assert tiny_model.training and tiny_model.features.training and not tiny_model.head.training
    assert torch.equal(tiny_model.head[2].weight.grad, marker)
    assert tiny_model.features[0].weight.grad is None


def test_computed_in_eval_mode(tiny_model, cifar_batch):
    """BatchNorm in train mode would mix images; the CAM uses eval mode whatever the caller's mode."""
    images, _ = cifar_batch
    expected = cam_maps(tiny_model.eval(), images[:8])
    assert torch.equal(cam_maps(tiny_model.train(), images[:8]), expected)


def test_frozen_parameters_still_give_maps(resnet18, cifar_batch):
    images, _ = cifar_batch
    frozen = nn.Sequential(resnet18).requires_grad_(False)
    try:
        maps = cam_maps(frozen, images[:4])
    finally:
        resnet18.requires_grad_(True)
    assert maps.amax(dim=(1, 2)).min() > 0.99


def test_bad_input(tiny_model, cifar_batch):
    images, labels = cifar_batch
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ValueError, match="target_layer"):
        cam_maps(linear, images)
    with pytest.raises(ValueError, match="target_layer"):
        cam_maps(tiny_model, images, target_layer="no.such.layer")
    with pytest.raises(ValueError, match="method"):
        cam_maps(tiny_model, images, method="nonsense")
    with pytest.raises(ValueError, match="targets"):
        cam_maps(tiny_model, images, targets=torch.full_like(labels, 10))
    with pytest.raises(ValueError, match="targets"):
        cam_maps(tiny_model, images, targets=labels[:3])
    nan_images = images.clone()
    nan_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        cam_maps(tiny_model, nan_images)
