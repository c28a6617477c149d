"""What operators see of a running dpx: structured logs and Prometheus metrics."""
