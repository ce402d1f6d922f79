"""Networks: the ViT encoder and the masked autoencoder built on it."""

from maskseg_monai.networks.amlp import AMLPMaskedAutoencoder
from maskseg_monai.networks.mae import MaskedAutoencoderViT, export_encoder
from maskseg_monai.networks.vit_encoder import ViTEncoder

__all__ = ["AMLPMaskedAutoencoder", "MaskedAutoencoderViT", "ViTEncoder", "export_encoder"]
