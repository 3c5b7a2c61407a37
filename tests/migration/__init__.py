"""Migration suite: programs written for ``websockets`` run on fastws unchanged
but for their imports, with the same observable results."""
