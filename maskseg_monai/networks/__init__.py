"""Networks: the ViT encoder, the masked autoencoders built on it, and UNETR for their transferred encoders."""

from maskseg_monai.networks.amlp import AMLPMaskedAutoencoder
from maskseg_monai.networks.mae import MaskedAutoencoderViT, export_encoder
from maskseg_monai.networks.transfer import TransferReport, freeze_encoder, load_pretrained_encoder
from maskseg_monai.networks.unetr import UNETR
from maskseg_monai.networks.vit_encoder import ViTEncoder

__all__ = [
    "AMLPMaskedAutoencoder",
    "MaskedAutoencoderViT",
    "TransferReport",
    "UNETR",
    "ViTEncoder",
    "export_encoder",
    "freeze_encoder",
    "load_pretrained_encoder",
]
