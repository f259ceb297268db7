"""The CDS Hooks 2.0 HTTP service."""
