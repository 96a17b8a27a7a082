"""LongCat-Video-Avatar: the audio-driven DiT, its audio features and its sampling (docs/avatar.md)."""
