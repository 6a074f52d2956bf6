"""Test helpers: tiny random-weight VLM fixtures of every supported family, and synthetic images."""

from visfocus.testing.fixtures import FAMILIES, build_tiny, make_image, tiny_model_dir

__all__ = ["FAMILIES", "build_tiny", "make_image", "tiny_model_dir"]
