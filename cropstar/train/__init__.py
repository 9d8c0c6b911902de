"""Training, evaluation, model artifacts, the model registry and retraining (DESIGN.md, "Data
contracts": model artifact; "The paper's protocols": selection by the lowest validation loss)."""
