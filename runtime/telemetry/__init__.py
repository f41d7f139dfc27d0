"""On-device telemetry, drift and feedback, and the reports made from them."""
