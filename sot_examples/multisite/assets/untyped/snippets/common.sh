{#- Shell helpers for toolbox scripts: logging to the console and the site syslog, and the
    phone-home that tells the peers this stage is done. -#}
set -euo pipefail
HOST={{ host.name | tojson }}
STAGE="{{ stage.index }}/{{ stage.count }} {{ stage.name }}"

log() {
    echo "vaquero[$HOST] $STAGE: $*" | tee /dev/console
    logger -n {{ site.metadata.syslog.split(":")[0] }} -P {{ site.metadata.syslog.split(":")[1] }} -t vaquero "$HOST $STAGE: $*" || true
}

phone_home() {
    curl -fsS --retry 5 -X POST {{ urls.phone_home | tojson }}
}

fail() {
    log "FAILED: $*"
    # No phone-home: the stage times out and the rollout counts the host as failed.
    sleep infinity
}
