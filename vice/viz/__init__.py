"""Figures (Pillow only, so they render on any node without a display)."""
