"""The bundle format: build one, open and verify one (folder or .tar)."""
