# The starburst-executor worker image.
# Build context: this repository (pyproject.toml, README.md, starburst_executor/).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Tasks run as an unprivileged user: nothing a worker does needs root.
RUN useradd --create-home --uid 10001 --user-group starburst
COPY pyproject.toml README.md /tmp/starburst-src/
COPY starburst_executor /tmp/starburst-src/starburst_executor
RUN pip install --no-cache-dir /tmp/starburst-src && rm -rf /tmp/starburst-src
USER starburst
WORKDIR /home/starburst
ENTRYPOINT ["python", "-m", "starburst_executor.worker"]
