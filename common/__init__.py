"""Small helpers shared by every stage: paths, atomic file writes, seeds, run records."""
