# relmon worker / dashboard image. Serving needs no torch: the model is built outside
# (`relmon model build`) and mounted at /app/models. For CUDA hosts add the `cuda` extra.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY relmon ./relmon
COPY streams ./streams
COPY scoring ./scoring
COPY dashboards ./dashboards
COPY schemas ./schemas
RUN pip install --no-cache-dir . && useradd --create-home relmon && mkdir -p /var/lib/relmon \
    && chown relmon /var/lib/relmon
USER relmon
ENTRYPOINT []
CMD ["relmon", "worker"]
