"""Device profiles shipped as data: one YAML per device (see docs/device-profiles.md)."""
