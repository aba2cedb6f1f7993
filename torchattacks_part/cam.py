"""Class activation maps, batched on the images' device.

GradCAM, XGradCAM and LayerCAM are computed here in torch from one forward and one backward pass through the target
layer, with the post-processing of pytorch-grad-cam (ReLU, per-image min-max, bilinear resize to the input size,
min-max again), so the maps equal the library's to float precision. Any other pytorch-grad-cam method runs through
the library itself: slower (it copies activations to the CPU) but exact by construction.

The model's train/eval flags and its parameters' ``.grad`` are left as they were: the maps are computed in eval mode
(as the PART authors did) and the backward pass asks autograd for the activation gradient only.
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_choice, check_images, check_labels

# Native methods: each maps (activations, gradients) of shape (B, K, h, w) to a raw map (B, h, w).


def _gradcam(activations, grads):
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


def _xgradcam(activations, grads):
    # Fu et al. (2020): weights normalised by the activation mass, as pytorch-grad-cam's XGradCAM (eps 1e-7).
    weights = (grads * activations / (activations.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1)


def _layercam(activations, grads):
    return (grads.clamp(min=0) * activations).sum(dim=1)


NATIVE_METHODS = {"gradcam": _gradcam, "xgradcam": _xgradcam, "layercam": _layercam}

# Other pytorch-grad-cam methods, by the class name in the library.
LIBRARY_METHODS = {
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "kpcacam": "KPCA_CAM",
    "fullgrad": "FullGrad",
}

CAM_METHODS = tuple(NATIVE_METHODS) + tuple(LIBRARY_METHODS)


def _min_max(maps):
    """pytorch-grad-cam's per-image scaling: (m - min) / (1e-7 + max(m - min))."""
    shifted = maps - maps.flatten(1).amin(dim=1).view(-1, 1, 1)
    return shifted / (1e-7 + shifted.flatten(1).amax(dim=1).view(-1, 1, 1))


def postprocess(raw, size):
    """Raw (B, h, w) maps -> (B, H, W) in [0, 1], exactly as pytorch-grad-cam post-processes one target layer."""
    maps = _min_max(raw.clamp(min=0))
    if tuple(maps.shape[-2:]) != tuple(size):
        # cv2.resize(INTER_LINEAR) samples at half-pixel centres, i.e. align_corners=False.
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _min_max(maps.clamp(min=0))


def _is_conv(module):
    return isinstance(module, nn.Conv2d)


def layer_candidates(model, target_layer=None):
    """Modules that may serve as the CAM's target layer, outermost first.

    ``target_layer`` may be a module of ``model``, a dotted name (``"layer4"``) or None. None means the last
    convolutional block: the outermost module, below the model itself, that contains the model's last ``nn.Conv2d``
    and outputs a feature map. That is ``layer4`` of a ResNet and ``block3`` of a WideResNet, the layers the PART
    authors used; the choice among these candidates is made on the first forward pass.
    """
    if isinstance(target_layer, nn.Module):
        if not any(m is target_layer for m in model.modules()):
            raise ValueError("target_layer must be a module of the model, a dotted module name, or None")
        return [target_layer]
    if isinstance(target_layer, str):
        try:
            return [model.get_submodule(target_layer)]
        except AttributeError:
            raise ValueError(f"target_layer {target_layer!r} is not a module of the model") from None
    if target_layer is not None:
        raise ValueError(f"target_layer must be a module, a dotted name or None, got {type(target_layer).__name__}")
    last_conv = None
    for name, module in model.named_modules():
        if _is_conv(module):
            last_conv = name
    if last_conv is None:
        raise ValueError("target_layer: the model has no nn.Conv2d layer, so a CAM needs an explicit target_layer")
    parts = last_conv.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts) + 1)]


@contextlib.contextmanager
def preserved_state(model):
    """Eval mode inside; every module's training flag and every parameter's .grad restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, g in grads:
            p.grad = g


def _forward_with_features(model, images, candidates):
    """Run the model once; return logits and the feature map of the outermost candidate that outputs one."""
    outputs = {}
    hooks = [
        layer.register_forward_hook(lambda mod, inp, out, i=i: outputs.__setitem__(i, out))
        for i, layer in enumerate(candidates)
    ]
    try:
        logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(candidates)):
        out = outputs.get(i)
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            return logits, out, candidates[i]
    raise ValueError("target_layer: no candidate layer produced a (B, K, h, w) feature map; pass target_layer")


def _resolve_targets(targets, logits):
    if targets is None:
        return logits.argmax(dim=1)
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
    return check_labels(targets.to(logits.device), logits.shape[0], logits.shape[1], name="targets")


def cam_maps(model, images, target_layer=None, method="gradcam", targets=None, resize=True):
    """Class activation maps of ``model`` for a batch of images.

    :param model: a ``torch.nn.Module`` classifier returning logits (B, num_classes).
    :param images: float tensor (B, C, H, W), finite, as the model takes it (normalised if the model expects it).
    :param target_layer: module, dotted module name, or None for the last convolutional block (see
        :func:`layer_candidates`).
    :param method: ``"gradcam"``, ``"xgradcam"``, ``"layercam"`` (batched torch) or any name in
        ``LIBRARY_METHODS`` (through pytorch-grad-cam).
    :param targets: class per image (B,) or None for the predicted class, as the PART authors did.
    :param resize: False: the native methods' maps at the layer's resolution (B, h, w), as the released "jet" rule
        takes them (``budget_map(..., size=(H, W))``).
    :return: tensor (B, H, W) in [0, 1] on the images' device, detached.
    """
    check_choice("method", method, CAM_METHODS)
    check_images(images, unit_range=False)
    candidates = layer_candidates(model, target_layer)
    if targets is not None:
        # Shape and sign now, the upper bound once the logits are known.
        check_labels(torch.as_tensor(targets), images.shape[0], name="targets")
    return compute_maps(model, images, candidates, method, targets, resize)


def compute_maps(model, images, candidates, method, targets=None, resize=True):
    """:func:`cam_maps` without its checks, for callers that validated their inputs and resolved the layer
    candidates once (:func:`layer_candidates`): the attacks, on every batch of a training run.

    :param resize: False keeps a native method's map at the layer's resolution (post-processed there), which is
        what the released code's "jet" rule resizes itself (:func:`~torchattacks_part.budget.released_jet_mask`);
        library methods always return full-size maps.
    """
    with preserved_state(model), torch.enable_grad():
        if method in NATIVE_METHODS:
            # The input needs a graph so the activation has one, even when the parameters are frozen.
            x = images.detach().requires_grad_(True)
            logits, features, _ = _forward_with_features(model, x, candidates)
            chosen = _resolve_targets(targets, logits)
            score = logits.gather(1, chosen[:, None]).sum()
            (grads,) = torch.autograd.grad(score, features)
            raw = NATIVE_METHODS[method](features.detach(), grads)
            return postprocess(raw, images.shape[-2:] if resize else raw.shape[-2:]).detach()
        return _library_cam(model, images, candidates, method, targets)


def _library_cam(model, images, candidates, method, targets):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if len(candidates) > 1:
        with torch.no_grad():
            _, _, layer = _forward_with_features(model, images[:1], candidates)
    else:
        layer = candidates[0]
    if targets is not None:
        logits = model(images[:1]).detach()  # only for the number of classes
        chosen = torch.as_tensor(targets).tolist()
        check_labels(torch.as_tensor(chosen), images.shape[0], logits.shape[1], name="targets")
        targets = [ClassifierOutputTarget(int(c)) for c in chosen]
    cam_class = getattr(pytorch_grad_cam, LIBRARY_METHODS[method])
    with cam_class(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=targets)
    return torch.from_numpy(maps).to(device=images.device, dtype=images.dtype)
