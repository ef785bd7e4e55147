"""Blueprints, one per concern; ``serve.factory`` registers them all."""
