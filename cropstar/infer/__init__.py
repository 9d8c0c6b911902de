"""Inference with a trained model: the cube as the model reads it, pixel probabilities, block-wise
raster maps (COG) and field-level predictions (GeoJSON)."""
