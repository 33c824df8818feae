"""Models of the `model/` config group: the physics baseline and the networks."""
