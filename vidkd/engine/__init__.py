"""Training and evaluation loops: the engine that runs a model over the loaders."""
