"""Config, checkpoint and image helpers, and the batch runner the script wires together."""
