"""Test harness: OTLP receiver, loopback S3 server, Prometheus, obsctl runner."""
