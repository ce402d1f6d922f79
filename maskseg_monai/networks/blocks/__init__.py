"""Building blocks of the networks: the ViT encoder and SG-One's similarity layers."""

from maskseg_monai.networks.blocks.similarity import (
    SUPPORTED_MAP_RESIZE,
    CosineSimilarityGuidance,
    MaskedAveragePooling,
    cosine_guidance,
    masked_average_pooling,
    resize_to,
)
from maskseg_monai.networks.blocks.vit_encoder import (
    SUPPORTED_POS_EMBED,
    TrainingAwareSABlock,
    ViTEncoder,
    transformer_blocks,
)

__all__ = [
    "CosineSimilarityGuidance",
    "MaskedAveragePooling",
    "SUPPORTED_MAP_RESIZE",
    "SUPPORTED_POS_EMBED",
    "TrainingAwareSABlock",
    "ViTEncoder",
    "cosine_guidance",
    "masked_average_pooling",
    "resize_to",
    "transformer_blocks",
]
