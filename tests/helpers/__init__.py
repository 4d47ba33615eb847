"""Helpers the tests import: synthetic tables, media files, processes and ports, pickles."""
