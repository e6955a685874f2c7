"""vice: dense self-supervised pretraining (ViCE) at cluster scale."""
