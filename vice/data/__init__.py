"""Data pipeline: image sources, superpixels, ViCE views with regional masking, loading."""
