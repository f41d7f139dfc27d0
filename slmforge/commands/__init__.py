"""Verbs that belong to no single stage: profiles, pipeline, demo."""
