"""Shared neural blocks, written once and reused by every method."""
