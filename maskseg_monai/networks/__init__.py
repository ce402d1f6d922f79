"""Networks: the ViT encoder, the masked autoencoders built on it, UNETR for their transferred encoders,
SG-One for one-shot segmentation and its backbones, and the training-free prototype-matching baseline."""

from maskseg_monai.networks.amlp import AMLPMaskedAutoencoder
from maskseg_monai.networks.backbones import CNNBackbone, OneShotBackbone, ViTBackbone
from maskseg_monai.networks.blocks.vit_encoder import ViTEncoder
from maskseg_monai.networks.mae import MaskedAutoencoderViT, export_encoder
from maskseg_monai.networks.prototype_matcher import PrototypeMatcher
from maskseg_monai.networks.sgone import SGOne
from maskseg_monai.networks.transfer import TransferReport, freeze_encoder, load_pretrained_encoder
from maskseg_monai.networks.unetr import UNETR

__all__ = [
    "AMLPMaskedAutoencoder",
    "CNNBackbone",
    "MaskedAutoencoderViT",
    "OneShotBackbone",
    "PrototypeMatcher",
    "SGOne",
    "TransferReport",
    "UNETR",
    "ViTBackbone",
    "ViTEncoder",
    "export_encoder",
    "freeze_encoder",
    "load_pretrained_encoder",
]
