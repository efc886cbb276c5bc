# The controller's image: `plunderctl controller` on Python, installed from the project's wheel
# with the pinned dependency tree (constraints.txt), running as an unprivileged user.
#   docker build -t ghcr.io/plunder-app/cluster-api-plunder:v0.1.0 .
# The boot service's image adds dnsmasq and Debian's iPXE binaries (config/bootservice):
#   docker build --target boot -t ghcr.io/plunder-app/cluster-api-plunder-boot:v0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS controller
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt /wheels/*.whl \
 && rm -rf /wheels /tmp/constraints.txt
# The Deployment (config/manager) runs it read-only, as this user, without privileges.
USER 65532:65532
ENTRYPOINT ["plunderctl", "controller"]

FROM controller AS boot
USER 0
RUN apt-get update \
 && apt-get install -y --no-install-recommends dnsmasq-base ipxe \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["plunderctl", "boot"]

# The default target (last stage wins): the controller.
FROM controller
