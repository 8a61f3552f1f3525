-- Runs once, on the first start of an empty PostgreSQL volume (docker-entrypoint-initdb.d):
-- POSTGRES_DB creates the MLflow database; the Prefect server gets its own database beside it.
CREATE DATABASE prefect;
