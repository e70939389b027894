"""Extractor presets: the registry (torch-free) and one module per family (imported only when built)."""
