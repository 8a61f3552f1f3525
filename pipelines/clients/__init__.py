"""Connections to outside services: S3 (``s3``), a Ray cluster (``ray_cluster``), moto's embedded S3
server (``embedded``)."""
