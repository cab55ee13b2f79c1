"""Developer tooling for local runs and tests (not deployed)."""
