"""Catalogues and interactions: schema, readers, prepare, the demo generator."""
