"""Tensor ops: superpixel pooling, Sinkhorn-Knopp, the embedding queue (no config objects)."""
