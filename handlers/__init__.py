"""TorchServe custom handlers; self-contained: they import nothing from zoo."""
