from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from maskseg_monai.masking import (
    SUPPORTED_MASKING,
    MaskingPolicy,
    MPSMasking,
    RandomMasking,
    generate_patch_mask,
    get_masking_policy,
    image_mask_to_patches,
    mask_from_scores,
    patch_mask_to_image,
    patchify,
    split_mae_output,
)
from maskseg_monai.networks import AMLPMaskedAutoencoder, MaskedAutoencoderViT

# Captured before the refactoring, from AMLPMaskedAutoencoder.select_patches and seeded network forwards.
GOLDEN = json.loads(Path(__file__).with_name("policies_golden.json").read_text())

TINY = GOLDEN["network_args"]  # the tiny network sizes the golden outputs were computed with
# the old AMLP arguments (mps_ prefix dropped) plus the step counter the policy read from the network
CASES = [
    dict(features="tokens", clusters=2, warmup=0, prob=1.0, lesion_rule="head", step=0),
    dict(features="tokens", clusters=2, warmup=5, prob=1.0, lesion_rule="head", step=2),
    dict(features="tokens", clusters=3, warmup=0, prob=1.0, lesion_rule="smallest", step=0),
    dict(features="pixels", clusters=2, warmup=0, prob=1.0, lesion_rule="head", step=7),
    dict(features="pixels", clusters=3, warmup=100, prob=1.0, lesion_rule="head", step=0),
    dict(features="tokens", clusters=2, warmup=0, prob=0.5, lesion_rule="head", step=3),
]


def scene(spatial_dims: int, b: int = 2, patch: int = 4, seed: int = 0):
    """Images with ~20% bright 'lesion' patches, tokens that separate them, random head logits; L = 64."""
    size = 32 if spatial_dims == 2 else 16
    g = torch.Generator().manual_seed(seed)
    n = (size // patch) ** spatial_dims
    lesion = (torch.rand(b, n, generator=g) < 0.2).float()
    img = 0.1 + 0.05 * torch.rand(b, 1, *(size,) * spatial_dims, generator=g)
    img = img + 0.8 * patch_mask_to_image(lesion, patch, (size,) * spatial_dims)
    tokens = torch.randn(b, n, 8, generator=g) + 3 * lesion[..., None]
    logits = torch.randn(b, n, generator=g)
    return img, tokens, logits


def bits(hex_values, n: int = 64) -> torch.Tensor:
    return torch.tensor([[float(c) for c in f"{int(h, 16):0{n}b}"] for h in hex_values])


def placeholder(images: torch.Tensor, n: int) -> torch.Tensor:
    return images.new_empty(images.shape[0], n, 0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_random_masking_draws_like_generate_patch_mask(spatial_dims):
    img = torch.rand(2, 1, *(16,) * spatial_dims)
    torch.manual_seed(7)
    chosen = RandomMasking()(img, placeholder(img, 64))
    torch.manual_seed(7)
    reference = generate_patch_mask(2, 64, 0.75, device=img.device)
    assert chosen.maps == {} and chosen.scores.shape == (2, 64)
    assert torch.equal(mask_from_scores(chosen.scores, 48).mask, reference.mask)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_mps_masking_reproduces_the_old_select_patches(spatial_dims, case):
    img, tokens, logits = scene(spatial_dims)
    args = dict(CASES[case])
    step = args.pop("step")
    policy = MPSMasking(**args, patch_size=4)
    torch.manual_seed(1234 + case)
    out = policy(img, tokens, {"lesion_logits": logits, "step": torch.tensor(step)})
    golden = GOLDEN["policy"][f"{spatial_dims}d-{case}"]
    order = torch.tensor([list(base64.b64decode(s)) for s in golden["order"]])
    assert torch.equal(torch.argsort(out.scores, dim=1, stable=True), order)
    assert torch.equal(out.maps["category"], bits(golden["category"]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", ["mae", "amlp-nomps", "amlp"])
def test_seeded_networks_mask_and_reconstruct_as_before(spatial_dims, kind):
    """Same weights, masks and outputs as before the policies: RNG use is unchanged."""
    img, _, _ = scene(spatial_dims)
    common = dict(in_channels=1, img_size=img.shape[2:], patch_size=4, spatial_dims=spatial_dims, mask_ratio=0.5)
    torch.manual_seed(0)
    if kind == "mae":
        net = MaskedAutoencoderViT(**common, **TINY)
    else:
        net = AMLPMaskedAutoencoder(**common, **TINY, use_mps=kind == "amlp", mps_warmup=1)
    net.train()
    for golden in GOLDEN["networks"][f"{kind}-{spatial_dims}d"]:  # AMLP: step 0 (warm-up), then step 1 (head)
        out = net(img)
        parts = split_mae_output(out, 1, net.output_extras)
        assert torch.equal(image_mask_to_patches(parts.mask, 4), bits(golden["mask"]))
        if "category" in golden:
            assert torch.equal(image_mask_to_patches(parts.extras["category"], 4), bits(golden["category"]))
        assert float(out.detach().double().sum()) == pytest.approx(golden["sum"], rel=1e-5)


class BrightestFirst(MaskingPolicy):
    """Toy plug-in: mask the patches with the highest mean intensity first."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, images, tokens, aux=None):
        return patchify(images, self.patch_size).mean(-1)  # scores alone are enough


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_plug_in_policy_object_needs_no_network_subclass(spatial_dims):
    img, _, _ = scene(spatial_dims)
    net = MaskedAutoencoderViT(
        1, img.shape[2:], 4, mask_ratio=0.25, spatial_dims=spatial_dims, masking=BrightestFirst(4), **TINY
    )
    pred, mask = net.forward_patches(img)
    brightness = patchify(img, 4).mean(-1)
    expected = torch.zeros_like(mask).scatter_(1, brightness.topk(16, dim=1).indices, 1.0)
    assert torch.equal(mask, expected) and pred.shape == (2, 64, 4**spatial_dims)
    assert net(img).shape == (2, 2, *img.shape[2:])  # MAE layout: no extras
    with pytest.raises(ValueError, match="patch_size 8"):
        MaskedAutoencoderViT(1, img.shape[2:], 4, spatial_dims=spatial_dims, masking=BrightestFirst(8), **TINY)


def test_policy_from_a_config_target():
    config = {
        "network_def": {
            "_target_": "maskseg_monai.networks.MaskedAutoencoderViT",
            "in_channels": 1,
            "img_size": 32,
            "patch_size": 4,
            "spatial_dims": 2,
            "mask_ratio": 0.4,
            **TINY,
            "masking": {
                "_target_": "maskseg_monai.masking.MPSMasking",
                "features": "pixels",
                "lesion_rule": "smallest",
                "patch_size": "@network_def#patch_size",
            },
        }
    }
    net = ConfigParser(config).get_parsed_content("network_def")
    assert isinstance(net.masking, MPSMasking)
    img, _, _ = scene(2)
    lesion = image_mask_to_patches((img > 0.5).float(), 4)
    mask = image_mask_to_patches(split_mae_output(net(img), 1).mask, 4)
    assert 0 < lesion.mean() < 0.4 and torch.equal(mask * lesion, lesion)  # lesion patches are masked first


def test_names_are_validated_and_objects_pass_through():
    assert [type(get_masking_policy(n)).__name__ for n in SUPPORTED_MASKING] == ["RandomMasking", "MPSMasking"]
    policy = RandomMasking()
    assert get_masking_policy(policy) is policy
    with pytest.raises(ValueError, match="Available options") as error:
        get_masking_policy("mpx")
    assert "'mps'" in str(error.value) and "'random'" in str(error.value)
    with pytest.raises(ValueError, match="random"):
        MaskedAutoencoderViT(1, 16, 4, spatial_dims=2, masking="uniform", **TINY)
    with pytest.raises(TypeError, match="MaskingPolicy"):
        get_masking_policy(3)
    with pytest.raises(ValueError, match="only apply to a policy given by name"):
        get_masking_policy(policy, prob=0.5)
    assert get_masking_policy("mps", clusters=3, lesion_rule="smallest").clusters == 3


def test_mps_arguments_and_aux_are_checked():
    with pytest.raises(ValueError, match="clusters"):
        MPSMasking(clusters=1)
    with pytest.raises(ValueError, match="prob"):
        MPSMasking(prob=1.5)
    with pytest.raises(ValueError, match="tokens"):
        MPSMasking(features="sift")
    with pytest.raises(ValueError, match="head"):
        MPSMasking(lesion_rule="largest")
    with pytest.raises(ValueError, match="patch_size"):
        MPSMasking(features="pixels")
    with pytest.raises(ValueError, match=r"clusters must be in \[2, 4\]"):
        MaskedAutoencoderViT(1, 16, 8, spatial_dims=2, masking=MPSMasking(clusters=5, lesion_rule="smallest"), **TINY)
    # the head rule reads the CCL head's logits, which a plain MAE does not have: refused at construction
    with pytest.raises(ValueError, match="lesion_logits"):
        MaskedAutoencoderViT(1, 16, 4, spatial_dims=2, masking="mps", **TINY)
    img, tokens, _ = scene(2)
    with pytest.raises(ValueError, match="needs aux"):
        MPSMasking()(img, tokens)
    assert MPSMasking(lesion_rule="smallest")(img, tokens).scores.shape == (2, 64)


def test_mps_start_masks_at_random_until_the_start_step():
    img, tokens, _ = scene(2)
    policy = MPSMasking(lesion_rule="smallest", start=10)
    assert policy.required_aux == ("step",)
    before = policy(img, tokens, {"step": torch.tensor(9)})
    after = policy(img, tokens, {"step": torch.tensor(10)})
    assert float(before.scores.max()) < 1.0  # every patch in [0, 1): plain random masking
    lesion = after.maps["category"].bool()
    assert lesion.any() and bool((after.scores[lesion] >= 1.0).all()) and bool((after.scores[~lesion] < 1.0).all())
    with pytest.raises(ValueError, match="start"):
        MPSMasking(start=-1)
    with pytest.raises(ValueError, match="needs aux"):
        policy(img, tokens)
