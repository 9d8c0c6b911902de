"""Data: Sentinel-2 cubes, patches, fields and datasets (to come), and the MNIST validation data."""
