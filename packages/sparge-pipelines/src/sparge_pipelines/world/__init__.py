"""The sparge world: procedural captioned videos and the small video model sparge trains and ships on them."""

from .render import SPLITS, Scene, SpargeWorld, WorldSize, render_scenes, sample_scene, scene_for_caption
from .vocab import TEXT_DIM, TEXT_TOKENS, Caption, ObjectCaption, encode_captions, parse_caption

__all__ = [
    "SPLITS",
    "TEXT_DIM",
    "TEXT_TOKENS",
    "Caption",
    "ObjectCaption",
    "Scene",
    "SpargeWorld",
    "WorldSize",
    "encode_captions",
    "parse_caption",
    "render_scenes",
    "sample_scene",
    "scene_for_caption",
]
