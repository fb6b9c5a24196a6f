"""The embedded tiny model: a character-level Qwen2 that learns arithmetic on a laptop CPU."""
