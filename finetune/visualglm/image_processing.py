"""VisualGLM-6B's image preprocessing: RGB, resize to 224x224 (bicubic), scale to [0, 1], CLIP mean/std.

The original (BLIP-2's eval transform) resizes the PIL image with bicubic interpolation to a
square, without cropping, and normalises with the OpenAI CLIP statistics; this does the same
with PIL and numpy (no torchvision needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from transformers import BaseImageProcessor, BatchFeature

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisualGLMImageProcessor(BaseImageProcessor):
    """PIL images (or HxWxC uint8 arrays) -> `pixel_values` (batch, 3, size, size) float32."""

    model_input_names = ["pixel_values"]  # noqa: RUF012 (transformers' class attribute)

    def __init__(
        self,
        image_size: int = 224,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive number of pixels; got {image_size}")
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]

    @staticmethod
    def _to_pil(image: Any) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.dtype == np.uint8:
            return Image.fromarray(image)
        raise TypeError(
            "VisualGLM images must be PIL images or HxW / HxWxC uint8 numpy arrays; "
            f"got {type(image).__name__}{getattr(image, 'shape', '')}"
        )

    def preprocess_one(self, image: Any) -> np.ndarray:
        pil = self._to_pil(image).convert("RGB")
        if pil.size != (self.image_size, self.image_size):
            pil = pil.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        array = np.asarray(pil, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.image_mean, dtype=np.float32)) / np.asarray(self.image_std, dtype=np.float32)
        return array.transpose(2, 0, 1)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("no images to preprocess")
        pixel_values = np.stack([self.preprocess_one(image) for image in batch])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)
