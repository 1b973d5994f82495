"""Session service: runs a protocol, records everything, reads records back, reports."""
