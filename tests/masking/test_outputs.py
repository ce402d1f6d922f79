from __future__ import annotations

import pytest
import torch

from maskseg_monai.masking import AMLP_EXTRAS, extra_channel, merge_mae_output, patchify, split_mae_output


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_merge_then_split_round_trip_with_named_extras(spatial_dims):
    img = torch.rand(2, 3, *(8,) * spatial_dims)
    n = 2**spatial_dims
    mask = (torch.arange(n) % 2).float().expand(2, n)
    extras = {"lesion_logits": torch.randn(2, n), "category": 1 - mask}
    out = merge_mae_output(patchify(img, 4), mask, 4, img.shape[2:], 3, extras)
    assert out.shape == (2, 3 + 1 + 2, *img.shape[2:])
    parts = split_mae_output(out, 3, AMLP_EXTRAS)
    assert torch.equal(parts.reconstruction, img)
    assert torch.equal(patchify(parts.mask, 4).amax(-1), mask)
    for name, values in extras.items():
        assert torch.equal(patchify(parts.extras[name], 4)[..., 0], values)
        assert torch.equal(parts.extras[name], out[:, extra_channel(3, name) : extra_channel(3, name) + 1])
    assert split_mae_output(out, 3).extras == {}  # extras only by name; trailing channels are ignored


def test_extra_channel_and_ill_args():
    assert [extra_channel(1, n) for n in AMLP_EXTRAS] == [2, 3]
    assert extra_channel(3, "category") == 5  # reconstruction 0-2, mask 3, lesion_logits 4
    with pytest.raises(ValueError, match="lesion_logits"):
        extra_channel(1, "lesion")  # the message lists the valid names
    with pytest.raises(ValueError, match=r"\[B, 1 \+ 1 \+ 2 \(lesion_logits, category\), \*spatial\]"):
        split_mae_output(torch.zeros(2, 3, 8, 8), 1, AMLP_EXTRAS)
    with pytest.raises(ValueError, match="masked-autoencoder output"):
        split_mae_output(torch.zeros(2, 1, 8, 8), 1)
