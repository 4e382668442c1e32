"""Training loops that the stage notebooks call."""
