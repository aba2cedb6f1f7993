"""Class activation maps, batched on the images' device.

GradCAM, XGradCAM and LayerCAM are computed here in torch from one forward and one backward pass through the target
layer, with the post-processing of pytorch-grad-cam (ReLU, per-image min-max, bilinear resize to the input size,
min-max again), so the maps equal the library's to float precision. Any other pytorch-grad-cam method runs through
the library itself: slower (it copies activations to the CPU) but exact by construction.

The model's train/eval flags and its parameters' ``.grad`` are left as they were: the maps are computed in eval mode
(as the PART authors did) and the backward pass asks autograd for the activation gradient only.

Vision Transformers: a target layer whose output is a token sequence (B, N, C), e.g. a block of a timm
``VisionTransformer``, is turned into a feature map (B, C, h, w) by dropping the class / register tokens (the model's
``num_prefix_tokens``) and laying the h * w patch tokens out on the patch grid (``patch_embed.grid_size``), exactly
the ``reshape_transform`` of pytorch-grad-cam's ViT tutorial; activations and gradients get the same reshape, then the
CNN math runs unchanged. By default a ViT's CAM layer is ``blocks[-1].norm1``, the layer pytorch-grad-cam recommends.
"""

import contextlib
import math

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


def _is_vit(module):
    """A timm-style Vision Transformer: a patch embedding with a grid and a non-empty sequence of blocks with norm1."""
    blocks = getattr(module, "blocks", None)
    return (hasattr(getattr(module, "patch_embed", None), "grid_size")
            and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0
            and isinstance(getattr(blocks[-1], "norm1", None), nn.Module))


def _layer_name(model, layer):
    for name, module in model.named_modules():
        if module is layer:
            return name or "<the model itself>"
    return type(layer).__name__


def token_layout(model, layer, image_size=None):
    """How the token output of ``layer`` lies on the patch grid: ``(prefix, (h, w))``.

    ``prefix`` is the number of leading non-patch tokens (class and register tokens: timm's ``num_prefix_tokens``),
    ``(h, w)`` the patch grid (``patch_embed.grid_size``; for a timm model built with ``dynamic_img_size`` the grid of
    ``image_size``). Both come from the innermost Vision Transformer of ``model`` holding ``layer``; either is None
    when the model does not say (then the token count decides: the tokens after the patches' count, or a square
    grid after 1 or 0 prefix tokens).
    """
    owner = None
    for module in model.modules():
        if hasattr(getattr(module, "patch_embed", None), "grid_size") and any(m is layer for m in module.modules()):
            owner = module  # modules() goes outside-in: the last hit is the innermost
    if owner is None:
        return getattr(model, "num_prefix_tokens", None), None
    embed = owner.patch_embed
    grid = tuple(int(g) for g in embed.grid_size) if embed.grid_size is not None else None
    if image_size is not None and getattr(owner, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
        grid = tuple(int(g) for g in embed.dynamic_feat_size(tuple(image_size)))
    prefix = getattr(owner, "num_prefix_tokens", None)
    return (int(prefix) if prefix is not None else None), grid


def _resolve_tokens(shape, layout):
    """(prefix, h, w) for a token tensor of ``shape`` (B, N, C), or a reason why it is not tokens of a grid."""
    n = shape[1]
    prefix, grid = layout
    if grid is not None:
        h, w = grid
        if prefix is None:  # the model does not say: whatever precedes the patches
            if n < h * w:
                return None, f"its {n} tokens are not the model's {h}x{w} patch grid (fewer than {h * w} tokens)"
            prefix = n - h * w
        if n != prefix + h * w:
            return None, (f"its {n} tokens are not the model's {h}x{w} patch grid plus {prefix} prefix "
                          f"(class/register) tokens ({prefix + h * w})")
        return (prefix, h, w), None
    # No patch grid known: a square grid after the prefix (1 class token by default, as pytorch-grad-cam's tutorial).
    for p in ((prefix,) if prefix is not None else (1, 0)):
        side = math.isqrt(max(n - p, 0))
        if n - p > 0 and side * side == n - p:
            return (p, side, side), None
    return None, (f"its {n} tokens (after {prefix if prefix is not None else '0 or 1'} prefix tokens) do not fill "
                  f"a square patch grid and the model has no patch_embed.grid_size")


def tokens_to_map(tokens, prefix, h, w):
    """(B, prefix + h*w, C) tokens -> (B, C, h, w) feature map: pytorch-grad-cam's ViT ``reshape_transform``."""
    return tokens[:, prefix:, :].reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def token_reshape_transform(model, layer, image_size=None):
    """The pytorch-grad-cam ``reshape_transform`` that matches what :func:`cam_maps` does on a token layer."""
    layout = token_layout(model, layer, image_size)

    def reshape(tensor):
        resolved, reason = _resolve_tokens(tensor.shape, layout)
        if resolved is None:
            raise ValueError(f"target_layer {_layer_name(model, layer)!r}: {reason}")
        return tokens_to_map(tensor, *resolved)

    return reshape


def layer_candidates(model, target_layer=None):
    """Modules that may serve as the CAM's target layer, outermost first.

    ``target_layer`` may be a module of ``model``, a dotted name (``"layer4"``) or None. None means the last
    convolutional block: the outermost module, below the model itself, that contains the model's last ``nn.Conv2d``
    and outputs a feature map. That is ``layer4`` of a ResNet and ``block3`` of a WideResNet, the layers the PART
    authors used; the choice among these candidates is made on the first forward pass. For a model holding a
    timm-style Vision Transformer (``patch_embed`` with a ``grid_size`` and ``blocks``), None means
    ``blocks[-1].norm1`` of the outermost one, the layer pytorch-grad-cam recommends for ViTs (its output tokens
    are reshaped to the patch grid, see :func:`token_layout`).
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
    for module in model.modules():
        if _is_vit(module):
            return [module.blocks[-1].norm1]
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


def _as_feature_map(model, layer, out, image_size):
    """``(to_map, reason)``: how to turn the layer's output (and its gradient) into a (B, K, h, w) map, or why not.

    ``to_map`` is None for a 4-D output (a CNN feature map, used as is) and the token reshape for a (B, N, C) output
    of tokens of the model's patch grid.
    """
    if not isinstance(out, torch.Tensor):
        return None, f"it outputs a {type(out).__name__}, not a tensor"
    if out.dim() == 4:
        return None, None
    if out.dim() == 3:
        resolved, reason = _resolve_tokens(out.shape, token_layout(model, layer, image_size))
        if resolved is None:
            return None, f"its output {tuple(out.shape)} is not a token sequence (B, N, C) of the patch grid: {reason}"
        return (lambda t: tokens_to_map(t, *resolved)), None
    return None, (f"its output has shape {tuple(out.shape)}: neither a feature map (B, K, h, w) nor tokens (B, N, C) "
                  f"on a patch grid (a layer without spatial positions or tokens, such as a classifier head or "
                  f"a pooled feature, has no class activation map)")


def _forward_with_features(model, images, candidates):
    """Run the model once; return logits, the output of the outermost candidate that yields a feature map, that
    candidate, and the reshape (None for a 4-D map, the token reshape for a ViT token layer)."""
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
    reasons = []
    for i, layer in enumerate(candidates):
        if i not in outputs:
            reasons.append("it did not run in the model's forward pass")
            continue
        out = outputs[i]
        if len(candidates) > 1 and not (isinstance(out, torch.Tensor) and out.dim() == 4):
            continue  # the last-conv-block candidates of a CNN: feature maps only, as always
        to_map, reason = _as_feature_map(model, layer, out, images.shape[-2:])
        if reason is None:
            return logits, outputs[i], layer, to_map
        reasons.append(reason)
    if len(candidates) == 1:
        raise ValueError(f"target_layer {_layer_name(model, candidates[0])!r} cannot give a CAM: {reasons[0]}")
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
    :param target_layer: module, dotted module name, or None for the last convolutional block, or a ViT's
        ``blocks[-1].norm1`` (see :func:`layer_candidates`). A layer outputting ViT tokens (B, N, C) is reshaped to
        its patch grid (B, C, h, w) first; a layer with neither a feature map nor grid tokens is a ValueError.
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
            logits, features, _, to_map = _forward_with_features(model, x, candidates)
            chosen = _resolve_targets(targets, logits)
            score = logits.gather(1, chosen[:, None]).sum()
            (grads,) = torch.autograd.grad(score, features)
            features = features.detach()
            if to_map is not None:  # ViT tokens: the same reshape for the activations and their gradient
                features, grads = to_map(features), to_map(grads)
            raw = NATIVE_METHODS[method](features, grads)
            return postprocess(raw, images.shape[-2:] if resize else raw.shape[-2:]).detach()
        return _library_cam(model, images, candidates, method, targets)


def _library_cam(model, images, candidates, method, targets):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # One image through the candidates: which layer, and whether its output is tokens to reshape.
    with torch.no_grad():
        _, _, layer, to_map = _forward_with_features(model, images[:1], candidates)
    reshape = None if to_map is None else token_reshape_transform(model, layer, images.shape[-2:])
    if targets is not None:
        logits = model(images[:1]).detach()  # only for the number of classes
        chosen = torch.as_tensor(targets).tolist()
        check_labels(torch.as_tensor(chosen), images.shape[0], logits.shape[1], name="targets")
        targets = [ClassifierOutputTarget(int(c)) for c in chosen]
    cam_class = getattr(pytorch_grad_cam, LIBRARY_METHODS[method])
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=images, targets=targets)
    return torch.from_numpy(maps).to(device=images.device, dtype=images.dtype)
