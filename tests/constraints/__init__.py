"""Structured output's constraint module (mlxd.constraints) against llguidance, jsonschema and re, without the
engine: compiling, caching, limits, masks and walks through grammars on the fixture and SmolLM2 tokenizers."""
