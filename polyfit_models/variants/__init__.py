"""One module per model variant of the lesson; ``polyfit_models.registry`` wires them up."""
