"""Batch scoring, health and explanations, the score store and the BentoML service."""
