"""Training: the model and its contract, the DALI read graph, one rank's engine, the Ray Train loop, MLflow."""
