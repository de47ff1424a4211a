"""Where records go: trace text and JSON Lines, top tables, the Prometheus exporter."""
