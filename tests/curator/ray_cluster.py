"""The Curator end-to-end tests' Ray cluster: :func:`resumelog.testing.ray.head_node`."""

from resumelog.testing.ray import head_node as local_cluster

__all__ = ["local_cluster"]
