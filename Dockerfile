# axonseg image for the API server and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PYTHONPATH=/app/apps/axonseg PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY requirements ./requirements
# PyPI's Linux torch wheel is the CUDA build: the same image runs on GPU workers and on CPU.
RUN pip install -c requirements/constraints-cuda.txt .
COPY apps ./apps
COPY server_config ./server_config
COPY sample_data ./sample_data
EXPOSE 8000
