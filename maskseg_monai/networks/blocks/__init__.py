"""Building blocks of the networks: the ViT encoder, SG-One's similarity layers and the prototype layers (ALP)."""

from maskseg_monai.networks.blocks.prototypes import (
    SUPPORTED_PROTOTYPES,
    AdaptiveLocalPrototypePooling,
    Prototypes,
    global_prototypes,
    pool_cells,
    prototype_scores,
)
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
    "AdaptiveLocalPrototypePooling",
    "CosineSimilarityGuidance",
    "MaskedAveragePooling",
    "Prototypes",
    "SUPPORTED_MAP_RESIZE",
    "SUPPORTED_POS_EMBED",
    "SUPPORTED_PROTOTYPES",
    "TrainingAwareSABlock",
    "ViTEncoder",
    "cosine_guidance",
    "global_prototypes",
    "masked_average_pooling",
    "pool_cells",
    "prototype_scores",
    "resize_to",
    "transformer_blocks",
]
