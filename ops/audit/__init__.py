"""A finished run read back from its topics (exports) and checked against its invariants."""
