# syntax=docker/dockerfile:1
# MLflow tracking server for the compose stack: PostgreSQL backend store (psycopg2), an S3/MinIO
# artifact store served through the server (boto3) and MLflow's basic authentication (the auth extra,
# Flask-WTF; configuration mlflow-basic-auth.ini). Same mlflow version as the project image.
#   docker build -f infra/docker/mlflow-server.Dockerfile -t cyclegan-mlflow:3.17.2 infra/docker
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m pip install "mlflow[auth]==3.17.2" boto3==1.44.8 psycopg2-binary==2.9.13

RUN useradd --uid 1000 --create-home --shell /bin/bash mlflow \
    && install -d -o mlflow -g mlflow /var/lib/mlflow-auth
# The user store lives in /var/lib/mlflow-auth (a volume); no password is in the file.
COPY mlflow-basic-auth.ini /etc/mlflow/basic_auth.ini
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
# Authentication on by default: it needs MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD and
# MLFLOW_FLASK_SERVER_SECRET_KEY in the environment (the compose stack sets them from .env).
CMD ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000"]
