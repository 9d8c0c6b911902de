"""Training, evaluation and retraining (DESIGN.md, "The paper's protocols": selection by the lowest
validation loss); the models they write are :mod:`cropstar.model`'s."""
