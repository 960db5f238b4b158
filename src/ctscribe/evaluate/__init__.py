"""Scoring for `ctscribe evaluate`: text metrics, clinical-findings accuracy and bootstrap intervals."""
