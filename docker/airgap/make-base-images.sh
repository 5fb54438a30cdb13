#!/usr/bin/env bash
# Stand-ins for the public base images, for machines that reach a Debian mirror and PyPI but no image registry.
#
#   docker/airgap/make-base-images.sh        # makes python:3.11-slim, prom/prometheus:v2.53.0, nginx:1.27
#
# Each image is made only if the engine does not have it already (a machine with a registry pulls the real
# ones and never needs this). They are Debian bookworm root filesystems built with debootstrap and imported:
# python3 3.11 with venv and pip; Debian's prometheus and nginx packages with the entry points the official
# images have. The Dockerfiles and docker-compose.yml name the official images and do not know about this.
set -euo pipefail

SUITE=${DEBIAN_SUITE:-bookworm}
# The mirror this machine's apt uses, unless DEBIAN_MIRROR says otherwise.
MIRROR=${DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v security | head -1 | awk '{print $2}' || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}
WORK=${AIRGAP_WORK:-$(mktemp -d /tmp/airgap.XXXXXX)}

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

rootfs() {  # rootfs DIR PACKAGES
    local dir=$1 packages=$2
    command -v debootstrap >/dev/null || { echo "debootstrap is needed: apt-get install -y debootstrap" >&2; exit 1; }
    echo "debootstrap $SUITE ($packages) from $MIRROR" >&2
    debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
}

if ! have python:3.11-slim; then
    rootfs "$WORK/python" python3,python3-venv,python3-pip,ca-certificates
    ln -sf python3 "$WORK/python/usr/bin/python"
    tar -C "$WORK/python" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        --change 'CMD ["python3"]' - python:3.11-slim
fi

if ! have prom/prometheus:v2.53.0 || ! have nginx:1.27; then
    rootfs "$WORK/tools" prometheus,nginx-light,ca-certificates
    mkdir -p "$WORK/tools/prometheus"
    if ! have prom/prometheus:v2.53.0; then
        tar -C "$WORK/tools" -c . | "$DOCKER" import \
            --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
            --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
            --change 'WORKDIR /prometheus' --change 'EXPOSE 9090' - prom/prometheus:v2.53.0
    fi
    if ! have nginx:1.27; then
        tar -C "$WORK/tools" -c . | "$DOCKER" import \
            --change 'CMD ["nginx", "-g", "daemon off;"]' --change 'EXPOSE 80' - nginx:1.27
    fi
fi
rm -rf "$WORK"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^(python|prom/prometheus|nginx):' || true
