"""Settings profiles, the sweep that compares them, and profiling notes."""
