"""Data: Sentinel-2 cubes (open, harmonise, mask, regularise), patches, fields, on-disk datasets,
importers, synthetic scenes, and the MNIST validation data. Import the modules directly, e.g.
``from cropstar.data.cube import open_cube``."""
