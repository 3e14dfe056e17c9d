"""Runnable examples of what sits around imagepipe."""
