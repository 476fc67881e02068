"""Vocabulary and ConText trigger files of the report labeller (package data)."""
