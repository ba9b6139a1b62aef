"""Evaluation: sentence-transformers evaluators from config, and the evaluate job."""
