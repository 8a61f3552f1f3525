"""Connections to outside services: S3 (``s3``), a Ray cluster and the credentials its nodes hold
(``ray_cluster``), moto's embedded S3 server (``embedded``), the Inception weights files of FID/KID
(``inception_weights``)."""
