"""Verifiable rewards: answer graders, format rewards, length shaping, and their composition."""
