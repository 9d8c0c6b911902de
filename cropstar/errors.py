"""The cropstar error hierarchy: one base class, one subclass per kind of fault.

Callers give the message, naming the thing at fault (the field id, the band, the file, the
expected and the found value). The CLI turns these errors into one line on stderr and a non-zero
exit code; the service turns them into 4xx problem-details responses.
"""


class CropstarError(Exception):
    """Base class of every error that cropstar raises on purpose.

    Catch this to handle any expected failure; anything else escaping the library is a bug.
    """


class InputError(CropstarError):
    """Raised for bad user input: a wrong tensor shape, an invalid option or argument value,
    or a file that is missing, unreadable or in the wrong format."""


class DataError(CropstarError):
    """Raised when data is well-formed but its content is unusable: a missing band, no valid
    observations, labels outside the class table, inconsistent time grids."""


class ModelMismatchError(CropstarError):
    """Raised when a model does not fit the data it is given: different band order, patch size,
    number of input features or classes than the model artifact records."""


class BrokenModelError(CropstarError):
    """Raised for a model artifact that cannot give trustworthy answers: weights that do not match the
    checksum its card records, weights that are not finite, or non-finite class probabilities."""


class MetadataConflictWarning(UserWarning):
    """Warned when a product's metadata disagree (e.g. a STAC item's declared raster offset and the BOA
    offset its processing baseline gives); the message names the product, the asset, both values and the
    value that was used."""
