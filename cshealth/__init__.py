"""cshealth: churn and expansion scores for Customer Success teams."""

__version__ = "0.1.0"
