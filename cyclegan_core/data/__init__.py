"""Data: image files, the unpaired dataset and its loader, the synthetic domain pair.

Modules: ``images`` (validation and decoding of every image read), ``transforms`` (the official
preprocessing), ``dataset`` (UnpairedDataset, the seeded DDP-ready DataLoader), ``cache`` (pre-decoded
arrays), ``synthetic`` (a domain pair with a known translation). Names imported on first use
(``cyclegan_core._lazy``).
"""

from typing import TYPE_CHECKING

from cyclegan_core._lazy import lazy_attributes

if TYPE_CHECKING:
    from cyclegan_core.data.cache import write_decoded_cache
    from cyclegan_core.data.dataset import UnpairedDataset, build_dataloader
    from cyclegan_core.data.images import InvalidImage, decode_image, list_images
    from cyclegan_core.data.synthetic import make_synthetic_dataset

__all__ = [
    "InvalidImage",
    "UnpairedDataset",
    "build_dataloader",
    "decode_image",
    "list_images",
    "make_synthetic_dataset",
    "write_decoded_cache",
]
__getattr__, __dir__ = lazy_attributes(__name__, {
    "cache": ["write_decoded_cache"],
    "dataset": ["UnpairedDataset", "build_dataloader"],
    "images": ["InvalidImage", "decode_image", "list_images"],
    "synthetic": ["make_synthetic_dataset"],
})
