"""Batch scoring, the score store and the BentoML service (issue 5)."""
