"""Helpers that start real servers (Orthanc) on loopback for integration tests."""
