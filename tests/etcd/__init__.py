"""Tests against a real etcd server (fixtures ``etcd_endpoint`` and ``private_etcd``)."""
