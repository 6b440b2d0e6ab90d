"""Readers, writers and records for GMNER data."""
