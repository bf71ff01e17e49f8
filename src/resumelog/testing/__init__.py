"""Test helpers shipped with resumelog (conformance suites, S3 test servers)."""
