# One image for the scheduler and for CPU and GPU workers. `pip install .` takes PyPI's default
# torch build, which carries CUDA, so the same image serves the GPU workers.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY polyfit_models polyfit_models
COPY polyfit_results polyfit_results
COPY scheduler scheduler
COPY worker worker
COPY store store
COPY examples examples
RUN pip install --no-cache-dir '.[postgres]'
ENV POLYFIT_DB_URL=sqlite:////data/polyfit.sqlite
VOLUME /data
ENTRYPOINT []
