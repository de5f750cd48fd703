"""Evaluation protocols for trained recognisers, one module per protocol."""
